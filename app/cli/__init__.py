"""Command-line interface: one module per command group, all calling app.core."""
