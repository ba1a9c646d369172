"""With the ``speedups`` extra, ``loads`` answers exactly what the ``json`` path answers.

msgspec's decoder is tried first; every value it returns must equal (same types, same
order, same float bits) what the ``json`` path returns, and every input either path
refuses must be refused with the same error.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from roomcast.protocol import RemoteProtocolError, _json
from roomcast.protocol._json import JsonValue, loads

MAX_DEPTH = 6

if _json._fast_decode is None:  # pragma: no cover - the test extra installs msgspec
    pytest.skip("msgspec (the speedups extra) is not installed", allow_module_level=True)


def answer(text: str, start: int, *, fast: bool) -> tuple[str, str]:
    """What ``loads`` (or the json path alone) returns, as its repr, or raises."""
    try:
        if fast:
            value = loads(text, start, max_depth=MAX_DEPTH)
        else:
            value = _json._loads_json(text, start, MAX_DEPTH)
    except RemoteProtocolError as exc:
        return "error", str(exc)
    return "value", repr(value)  # repr: types, key order and float digits all count


json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
# Hand-written JSON that is nearly right or subtly wrong: the places decoders differ.
tricky = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1e-400",
        "NaN",
        "Infinity",
        "-0",
        "-0.0",
        "1E2",
        "0.1",
        "1.0000000000000001110223024625156540423631668090820312500001",
        "9" * 4300,
        "9" * 4301,
        '"\\ud800"',
        '"\\udc00"',
        '"\\ud83d\\ude00"',
        '"\\ud800\\u0041"',
        '"\\u0000"',
        '"\t"',
        '{"a":1,"b":2,"a":3}',
        "[1,]",
        "[1] x",
        "[1]  \n",
        " [1]",
        "",
        "[" * 7 + "]" * 7,
        '[[[["[[[["]]]]',
        "\ufeff[1]",
        "tru",
        "01",
    ]
)


@given(st.one_of(json_values.map(json.dumps), tricky, st.text(max_size=40)), st.integers(0, 3))
@example('42["echo","1733379600123456:xxxx"]', 2)
def test_loads_with_msgspec_answers_as_the_json_path(text: str, start: int) -> None:
    start = min(start, len(text))
    assert answer(text, start, fast=True) == answer(text, start, fast=False)


def test_msgspec_parses_events_and_never_sees_leading_whitespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _json._fast_decode
    assert fast is not None
    calls: list[str] = []

    def spy(text: str) -> JsonValue:
        calls.append(text)
        return fast(text)

    monkeypatch.setattr(_json, "_fast_decode", spy)
    assert loads('42["a",1.5]', 2, max_depth=MAX_DEPTH) == ["a", 1.5]
    with pytest.raises(RemoteProtocolError, match="invalid JSON payload"):
        loads("42 [1]", 2, max_depth=MAX_DEPTH)
    assert calls == ['["a",1.5]']


def written(value: object, *, fast: bool) -> tuple[str, str]:
    """What ``dumps`` writes (or raises), with msgspec's encoder allowed or not."""
    saved = _json._fast_encode
    if not fast:
        _json._fast_encode = None
    try:
        return "text", _json.dumps(value)  # type: ignore[arg-type]  # tuples are written too
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        return "error", type(exc).__name__
    finally:
        _json._fast_encode = saved


encodable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x40)),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=80,
)


@given(encodable)
@example(["\ud800"])
@example({"a": 1e21})
@example([True, 1, "\u2028\x7f\x00\x1f"])
@example(list(range(100)))
def test_dumps_writes_the_same_with_or_without_msgspec(value: object) -> None:
    assert written(value, fast=True) == written(value, fast=False)
