"""Data files shipped with the app: system-prompt presets, styles, icons, evaluation text."""
