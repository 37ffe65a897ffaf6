"""The catalog of Mixtral GGUF files Mixtral Desk knows how to download (filled in by the catalog work)."""
