"""Grammars that hold a reply to a shape: JSON, JSON following a schema, or tool calls (llama.cpp's GBNF, made
by llama-cpp-python's JSON-schema converter, which this module extends with integer ranges).

What a grammar cannot hold is said, not ignored: a response format whose schema uses such keywords is refused
(the client asked for output that validates); a tool's parameters are held as far as a grammar can (the model
also reads the schema itself in its prompt).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from app.core.errors import DeskError

ANY_OBJECT: dict[str, Any] = {"type": "object"}
# JSON-schema keywords no grammar here holds (integer bounds are held; bounds on other numbers are not)
UNHELD_KEYWORDS = (
    "multipleOf",
    "uniqueItems",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "contains",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedProperties",
)
MAX_DIGITS = 16  # an unbounded integer has at most this many digits (llama.cpp's converter allows 16 too)
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def json_grammar(schema: dict[str, Any] | None = None) -> str:
    """GBNF for a JSON object (``schema`` None), or for JSON valid against ``schema``.

    Raises:
        DeskError: the schema uses something a grammar cannot hold (the message names it).
    """
    if schema is not None:
        unheld = sorted(set(_unheld_keywords(schema)))
        if unheld:
            raise DeskError(
                f"This JSON schema uses {', '.join(unheld)}, which the reply's grammar cannot enforce; "
                "remove it (and check the value yourself) to get JSON that follows the rest."
            )
    return _to_gbnf(schema if schema is not None else ANY_OBJECT)


def tool_calls_grammar(tools: Sequence[dict[str, Any]], marker: int, *, only: str = "", parallel: bool = True) -> str:
    """GBNF for a reply that is tool calls: the ``marker`` token, then a JSON list of
    ``{"name": ..., "arguments": {...}}`` whose arguments follow each tool's parameter schema (``only``: that
    tool alone; ``parallel`` False: one call). Mistral's optional 9-character ``id`` may follow.

    Raises:
        DeskError: no tool is named ``only``, or a tool's parameters cannot be made a grammar.
    """
    choices = []
    for tool in tools:
        function = tool["function"]
        if only and function["name"] != only:
            continue
        choices.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or ANY_OBJECT,
                    "id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"},
                },
                "required": ["name", "arguments"],
            }
        )
    if not choices:
        raise DeskError(f"No tool named {only!r} is offered, so the reply cannot be made to call it.")
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": choices}, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    calls = re.sub(r"^root ::=", "tool-calls ::=", _to_gbnf(schema), flags=re.MULTILINE)
    return f'root ::= <[{marker}]> " "? tool-calls\n{calls}'


def _to_gbnf(schema: dict[str, Any]) -> str:
    try:
        converter: Any = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        converter.visit(converter.resolve_refs(schema, "request"), "")
        return str(converter.format_grammar())
    except DeskError:
        raise
    except Exception as err:  # the converter raises plain exceptions (asserts) for what it does not support
        raise DeskError(f"This JSON schema cannot be turned into a grammar: {err}") from err


@functools.cache
def _converter_class() -> Any:
    """llama-cpp-python's JSON-schema converter, with integer ranges (it ignores minimum and maximum)."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):  # llama-cpp-python's, untyped
        def visit(self, node: dict[str, Any], name: str) -> str:
            if isinstance(node, dict) and node.get("type") == "integer" and any(k in node for k in BOUNDS):
                low, high = _integer_bounds(node)
                if low is not None and high is not None and low > high:
                    raise DeskError(f"No integer lies between {low} and {high}.")
                rule = f"({integer_range_gbnf(low, high)}) space"
                return str(self._add_rule(name or "root", rule))  # type: ignore[no-untyped-call]
            return str(super().visit(node, name))  # type: ignore[no-untyped-call]

    return Converter


def _integer_bounds(node: dict[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integer ``node``'s bounds allow (None: unbounded)."""

    def number(key: str) -> float | None:
        value = node.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    lows = [math.ceil(v) for v in (number("minimum"),) if v is not None]
    lows += [math.floor(v) + 1 for v in (number("exclusiveMinimum"),) if v is not None]
    highs = [math.floor(v) for v in (number("maximum"),) if v is not None]
    highs += [math.ceil(v) - 1 for v in (number("exclusiveMaximum"),) if v is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def integer_range_gbnf(low: int | None, high: int | None) -> str:
    """GBNF alternatives for the decimal integers from ``low`` to ``high`` (None: unbounded), no leading zeros."""
    natural = f'"0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}}'
    if low is None and high is None:
        return f'"-"? ({natural})'
    if low is not None and low >= 0:
        return " | ".join(_naturals_from(low, high))
    if high is not None and high < 0:
        return '"-" (' + " | ".join(_naturals_from(-high, -low if low is not None else None)) + ")"
    negative = " | ".join(_naturals_from(1, -low if low is not None else None))
    positive = natural if high is None else " | ".join(_naturals_from(0, high))
    return f'"-" ({negative}) | {positive}'


def _naturals_from(low: int, high: int | None) -> Iterator[str]:
    """Sequences for low..high (high None: no end), one per number of digits."""
    top = high if high is not None else 10 ** len(str(low)) - 1
    for digits in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(top, 10**digits - 1)
        if first <= last:
            yield from _same_length(str(first), str(last))
    longer = MAX_DIGITS - len(str(low)) - 1
    if high is None and longer >= 0:  # and every longer number, up to MAX_DIGITS digits
        yield f"[1-9] [0-9]{{{len(str(low))}}} [0-9]{{0,{longer}}}"


def _same_length(low: str, high: str) -> Iterator[str]:
    """Sequences for the numbers from ``low`` to ``high``, both written with the same number of digits."""
    if not low:
        yield ""
        return
    rest = len(low) - 1
    if low[0] == high[0]:
        for tail in _same_length(low[1:], high[1:]):
            yield f'"{low[0]}" {tail}'.strip()
        return
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        yield f"[{low[0]}-{high[0]}] " + " ".join(["[0-9]"] * rest)
        return
    for tail in _same_length(low[1:], "9" * rest):
        yield f'"{low[0]}" {tail}'.strip()
    if int(low[0]) + 1 <= int(high[0]) - 1:
        yield f"[{int(low[0]) + 1}-{int(high[0]) - 1}] " + " ".join(["[0-9]"] * rest)
    for tail in _same_length("0" * rest, high[1:]):
        yield f'"{high[0]}" {tail}'.strip()


def _unheld_keywords(node: Any) -> Iterator[str]:
    """The keywords in ``node`` (a schema) and its subschemas that no grammar here holds."""
    if not isinstance(node, dict):
        return
    yield from (k for k in UNHELD_KEYWORDS if k in node)
    if node.get("type") != "integer":
        yield from (k for k in BOUNDS if k in node)
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            for sub in node[key].values():
                yield from _unheld_keywords(sub)
    for key in ("items", "additionalProperties"):
        yield from _unheld_keywords(node.get(key))
    for key in ("prefixItems", "anyOf", "oneOf", "allOf", "items"):
        if isinstance(node.get(key), list):
            for sub in node[key]:
                yield from _unheld_keywords(sub)
