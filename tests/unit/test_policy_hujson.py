"""HuJSON parser: JSON plus comments and trailing commas; every fault a PolicyError with a place."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.policy import PolicyError, parse_hujson
from umbranet.policy.hujson import MAX_DEPTH, parse

VALID = [
    ("{}", {}),
    ("[]", []),
    ("[1, 2, 3,]", [1, 2, 3]),
    ('{"a": 1,}', {"a": 1}),
    ('{"a": [true, false, null],}', {"a": [True, False, None]}),
    ("// c\n{} // trailing", {}),
    ("/* a */ [ /* b */ 1 /* c */ , ] /* d */", [1]),
    ("/* multi\nline * / still */ 7", 7),
    ('"\\u00e9\\n\\t\\"\\\\\\/"', 'é\n\t"\\/'),
    ('"\\ud83d\\ude00"', "\U0001f600"),
    ("-0.5e3", -500.0),
    ("0", 0),
    ("1E2", 100.0),
    ("\ufeff[1]", [1]),
    ('{"a":{"b":{"c":[]}}}', {"a": {"b": {"c": []}}}),
    ('"// not a comment"', "// not a comment"),
    ("[1 // one\n, 2]", [1, 2]),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_documents(text: str, expected: Any) -> None:
    assert parse_hujson(text) == expected


INVALID = [
    ("", 1, 1, "empty document"),
    ("   \n  ", 2, 3, "empty document"),
    ("{", 1, 2, "expected a string key"),
    ("[1,,2]", 1, 4, "expected a value"),
    ("[1 2]", 1, 4, "expected ',' or ']'"),
    ('{"a" 1}', 1, 6, "expected ':'"),
    ('{"a": 1 "b": 2}', 1, 9, "expected ',' or '}'"),
    ('{"a": 1, "a": 2}', 1, 10, "duplicate key 'a'"),
    ('"abc', 1, 1, "unterminated string"),
    ('"a\nb"', 1, 3, "control character"),
    ('"\\x"', 1, 2, "invalid escape"),
    ('"\\u12"', 1, 2, "invalid \\u escape"),
    ('"\\ud800"', 1, 2, "unpaired surrogate"),
    ('"\\udc00"', 1, 2, "unpaired surrogate"),
    ('"\\ud800\\u0041"', 1, 2, "unpaired surrogate"),
    ("01", 1, 2, "after the document"),
    ("-", 1, 1, "invalid number"),
    ("1.", 1, 2, "after the document"),
    ("tru", 1, 1, "expected a value"),
    ("[1] x", 1, 5, "after the document"),
    ("/* never closed", 1, 1, "unterminated /* comment"),
    ("[1, /* open\n\n", 1, 5, "unterminated /* comment"),
    ("{,}", 1, 2, "expected a string key"),
    ("[,]", 1, 2, "expected a value"),
    ("{'a': 1}", 1, 2, "expected a string key"),
    ("[NaN]", 1, 2, "expected a value"),
    ("\n\n  [1,\n   }", 4, 4, "expected a value"),
    ("1" * 70, 1, 1, "longer than"),
    ("\t[x]", 1, 3, "expected a value"),
]


@pytest.mark.parametrize(("text", "line", "column", "reason"), INVALID)
def test_invalid_documents_say_where_and_why(
    text: str, line: int, column: int, reason: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_hujson(text)
    error = caught.value
    assert error.code == "policy_syntax"
    assert (error.line, error.column) == (line, column), str(error)
    assert reason in error.reason


def test_depth_is_bounded() -> None:
    deep = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    with pytest.raises(PolicyError, match="nested deeper"):
        parse_hujson(deep)
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_hujson(ok) is not None


def test_positions_of_values_and_keys() -> None:
    text = '{\n  // rules\n  "rules": [\n    {"src": ["a"]},\n  ],\n}'
    doc = parse(text)
    assert doc.where(("rules",)) == (3, 12)
    assert doc.where(("rules",), key=True) == (3, 3)
    assert doc.where(("rules", 0, "src", 0)) == (4, 14)
    # a missing path falls back to its nearest parent
    assert doc.where(("rules", 0, "dst")) == (4, 5)


def test_error_text_names_code_and_place() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_hujson("[1,\n 2 3]")
    assert (
        str(caught.value)
        == "policy_syntax: line 2, column 4: expected ',' or ']' in array, found '3'"
    )


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_random_text_raises_only_policy_error(text: str) -> None:
    try:
        parse_hujson(text)
    except PolicyError as error:
        assert error.line is not None and error.line >= 1
        assert error.column is not None and error.column >= 1


JSONISH = st.text(alphabet='{}[],:"\\/*\n tfrueanl0123456789.-eE+u', max_size=80)


@settings(max_examples=1000)
@given(JSONISH)
def test_near_json_agrees_with_json_where_json_is_strict(text: str) -> None:
    """Where the standard parser accepts, we return the same value (or refuse a duplicate
    key or surrogate it lets through); where we accept, it is JSON or a HuJSON extension."""
    try:
        expected = json.loads(text)
        strict_ok = True
    except ValueError:
        strict_ok = False
    try:
        got = parse_hujson(text)
    except PolicyError:
        if strict_ok:
            assert _has_duplicate_keys(text) or "\\ud" in text.lower()
        return
    if strict_ok:
        assert _same(got, expected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300)
@given(json_values, st.sampled_from(["", "// c\n", "/* c */"]), st.booleans())
def test_round_trip_with_comments_and_trailing_commas(
    value: Any, comment: str, trailing: bool
) -> None:
    text = json.dumps(value, indent=1)
    if trailing:
        text = text.replace("\n]", ",\n]").replace("\n}", ",\n}")
    text = text.replace("\n", f" {comment}\n") if comment.startswith("/*") else text
    text = f"{comment}{text}\n{comment}"
    assert _same(parse_hujson(text), value)


def _has_duplicate_keys(text: str) -> bool:
    duplicate = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicate
        keys = [k for k, _ in pairs]
        duplicate = duplicate or len(keys) != len(set(keys))
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return duplicate


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
