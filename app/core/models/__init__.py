"""Model files: the catalog, GGUF headers, downloads and the local model store."""
