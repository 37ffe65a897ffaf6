"""Plain-Python core of Mixtral Desk. Never imports Qt: the CLI, GUI and server all call it."""
