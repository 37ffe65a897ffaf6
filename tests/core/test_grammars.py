"""Grammars: integer ranges that llama-cpp-python's JSON-schema converter ignores are held exactly, and schema
keywords no grammar holds are named in a refusal instead of being ignored."""

from __future__ import annotations

import re

import pytest

from app.core.errors import DeskError
from app.core.runtime.grammars import integer_range_gbnf, json_grammar, tool_calls_grammar

RANGES = [
    (0, 100),
    (5, 5),
    (7, 1234),
    (-30, 45),
    (-500, -20),
    (None, 10),
    (-7, None),
    (13, None),
    (None, -5),
    (99, 1000),
]


def as_regex(gbnf: str) -> re.Pattern[str]:
    """These alternatives use only literals, classes, groups, | and *: as a regex they match the same strings."""
    return re.compile("^(?:" + re.sub(r"\s+", "", gbnf.replace('"', "")) + ")$")


@pytest.mark.parametrize(("low", "high"), RANGES)
def test_an_integer_range_matches_exactly_the_integers_in_it(low: int | None, high: int | None) -> None:
    pattern = as_regex(integer_range_gbnf(low, high))
    for number in range(-2500, 2500):
        inside = (low is None or number >= low) and (high is None or number <= high)
        assert bool(pattern.match(str(number))) == inside, number
    assert not pattern.match("007") and not pattern.match("-0")
    if high is None:  # no end, but not for ever: a model writing digits must reach the end of the number
        assert pattern.match("9" * 16) and not pattern.match("9" * 17)


def test_a_schema_with_integer_bounds_becomes_a_grammar_with_the_range() -> None:
    grammar = json_grammar({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 12}}})
    assert '"1" [0-2]' in grammar


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "number", "maximum": 1}, "maximum"),
        ({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}, "uniqueItems"),
        ({"anyOf": [{"type": "integer", "multipleOf": 5}]}, "multipleOf"),
    ],
)
def test_keywords_no_grammar_holds_are_named_not_ignored(schema: dict, named: str) -> None:
    with pytest.raises(DeskError, match=named):
        json_grammar(schema)


def test_a_property_named_like_a_keyword_is_just_a_property() -> None:
    assert json_grammar({"type": "object", "properties": {"not": {"type": "string"}}})


def test_tool_calls_start_with_the_marker_token_and_parallel_calls_repeat() -> None:
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    parallel = tool_calls_grammar([tool], 5)
    single = tool_calls_grammar([tool], 5, parallel=False)
    assert parallel.startswith("root ::= <[5]>") and single.startswith("root ::= <[5]>")
    calls = {g: next(line for line in g.splitlines() if line.startswith("tool-calls ::=")) for g in (parallel, single)}
    assert '("," space item)*' in calls[parallel] and '","' not in calls[single]
