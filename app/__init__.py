"""Mixtral Desk: run Mixtral 8x7B / 8x22B locally with llama.cpp."""

__version__ = "0.1.0"
APP_NAME = "Mixtral Desk"
