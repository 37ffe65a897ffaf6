"""OpenAI-compatible HTTP API over app.core: serve the loaded model to editors, scripts and web UIs."""
