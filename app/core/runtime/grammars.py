"""Grammars that hold a reply to a shape: JSON, or JSON following a schema (llama.cpp's GBNF, made by
llama-cpp-python's JSON-schema converter)."""

from __future__ import annotations

import json
from typing import Any

from app.core.errors import DeskError

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def json_grammar(schema: dict[str, Any] | None = None) -> str:
    """GBNF for a JSON object (``schema`` None), or for JSON valid against ``schema``.

    Raises:
        DeskError: the schema uses something the converter cannot express (the message says what).
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema if schema is not None else ANY_OBJECT)))
    except Exception as err:  # the converter raises plain exceptions for what it does not support
        raise DeskError(f"This JSON schema cannot be turned into a grammar: {err}") from err
