"""The engine host: the one owner of llama.cpp objects, and what runs on it (decoding, routing traces,
measurements, tuning), plus the remote engine that offers the same surface.

Only this package imports ``llama_cpp``.
"""
