"""PySide6 desktop interface: views, Qt models and thin workers over app.core."""
