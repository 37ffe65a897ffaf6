"""What the app keeps: conversations, presets, settings and where files live."""
