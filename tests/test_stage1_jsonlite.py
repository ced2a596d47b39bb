"""stage1's JSON (the _json C scanner, a small encoder) agrees with the json module."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerboot.initrd.stage1.jsonlite import dumps, loads

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_round_trips_like_the_json_module(document: object) -> None:
    assert dumps(document) == json.dumps(document)
    assert dumps(document, sort_keys=True) == json.dumps(document, sort_keys=True)
    assert loads(json.dumps(document)) == json.loads(json.dumps(document))
    assert loads(json.dumps(document, indent=1)) == document


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1, 2", "nul", '{"a": 1} x', "NaN", '"\\x"', "{'a': 1}"])
def test_malformed_documents_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_whitespace_and_unicode() -> None:
    assert loads(' \n{"k": "\\u00e9\\ud83d\\ude00", "n": [1, 2.5, -3e2, true, null]}\n ') == {
        "k": "é😀", "n": [1, 2.5, -300.0, True, None]}
    assert dumps({"k": "é"}) == '{"k": "\\u00e9"}'
    with pytest.raises(TypeError):
        dumps({1: 2})
    with pytest.raises(ValueError):
        dumps(float("nan"))
