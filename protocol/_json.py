"""Compact, strict JSON for the wire: one encoder, one decoder, bounded nesting.

The Socket.IO default parser (socket.io-parser 4.2) writes ``JSON.stringify`` output:
no spaces, non-ASCII text as is, keys in insertion order. Python's ``json`` module does
the same with ``separators=(",", ":")`` and ``ensure_ascii=False``. Both the encoder and
the decoder are module-level instances because ``json.loads``/``json.dumps`` with any
non-default keyword build a fresh ``JSONDecoder``/``JSONEncoder`` on every call, which
costs more than the parse itself for a small event.

Numbers print as JavaScript's ``Number.prototype.toString`` prints them, so our text is
byte-identical to socket.io-parser's: Python writes ``1e-05`` and ``1e-07`` where
JavaScript writes ``0.00001`` and ``1e-7``. The one exception is a float with an
integral value below 1e21: it keeps Python's ``2.0`` or ``1e+16`` (JavaScript: ``2``,
``10000000000000000``), so a float stays the same float through our own decoder.
JavaScript never sends those: its ``2`` and ``10000000000000000`` are ``int`` here.

What ``JSON.parse`` accepts and Python would map to something no peer can read back is
refused: ``NaN``/``Infinity`` literals, numbers that overflow a double, and escaped lone
UTF-16 surrogates (``"\\ud800"``), which cannot be written as UTF-8 to any other client.
The encoder refuses lone surrogates too.

With the ``speedups`` extra installed, ``loads`` first tries msgspec's C decoder (about
4 times faster than the ``json`` module on a Socket.IO event). Its result is kept only
when the ``json`` path would have returned the same value: anything msgspec refuses, and
anything our checks would refuse, is parsed again by the ``json`` path, which then
returns or raises exactly what it does without msgspec. ``dumps`` hands msgspec's
encoder only values it writes exactly as the ``json`` path does (see ``_plain``).
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable
from typing import Final, NoReturn, TypeAlias

from roomcast.protocol._errors import RemoteProtocolError

__all__ = ["JsonValue", "dumps", "exceeds_depth", "loads"]

JsonValue: TypeAlias = (
    bool | int | float | str | bytes | list["JsonValue"] | dict[str, "JsonValue"] | None
)
"""A JSON value as this package hands it out; ``bytes`` is a binary attachment."""

_JSON_WHITESPACE: Final = " \t\n\r"
# First characters msgspec's decoder is not asked about: "" (nothing to parse) and
# whitespace, which msgspec skips and ``loads`` refuses at the start.
_NOT_FAST: Final = ("", " ", "\t", "\n", "\r")


def _reject_constant(name: str) -> NoReturn:
    # JSON (RFC 8259 §6) has no NaN or Infinity; Python's decoder accepts them by default.
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    # "1e400" parses as inf in both JavaScript and Python; nobody can encode it back.
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_encode: Final = _ENCODER.encode
_raw_decode: Final = _DECODER.raw_decode
_encode_string: Final = json.encoder.encode_basestring
_fast_decode: Callable[[str], JsonValue] | None
_fast_encode: Callable[[object], bytes] | None
try:
    from msgspec.json import Decoder as _MsgspecDecoder
    from msgspec.json import Encoder as _MsgspecEncoder
except ImportError:  # pragma: no cover - the speedups extra is not installed: json only
    _fast_decode = _fast_encode = None
else:
    _fast_decode = _MsgspecDecoder().decode
    _fast_encode = _MsgspecEncoder().encode

# Most nodes a value may have for msgspec's encoder to be asked (see _plain).
_PLAIN_MAX_NODES: Final = 64


def _js_number(value: float) -> str:
    """Format a finite float as JavaScript's ``Number.prototype.toString`` (ECMA-262
    Number::toString), except integral values below 1e21, which keep Python's repr."""
    if value.is_integer() and abs(value) < 1e21:
        return repr(value)
    # repr() and JavaScript both pick the shortest digits that round-trip; only the
    # layout differs. Split repr into digits and the decimal point's position n, so the
    # value is 0.<digits> * 10**n.
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    joined = whole + fraction
    digits = joined.lstrip("0")
    n = len(whole) - (len(joined) - len(digits)) + (int(exponent) if exponent else 0)
    digits = digits.rstrip("0")
    k = len(digits)
    sign = "-" if value < 0 else ""
    # (JavaScript's k <= n <= 21 case, digits then zeros, is an integral value: repr.)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


def _key(key: object) -> str:
    # json.dumps turns these key types into strings; keep the same leniency. The C
    # encoder has already refused any other key, and non-finite float keys.
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return _js_number(key)
    raise TypeError(f"unsupported key {key!r}")  # pragma: no cover - refused by the C encoder


def _write(value: object, out: list[str]) -> None:
    """The slow path of ``dumps``: the same JSON, with JavaScript number formatting.

    Only called on values the C encoder has just encoded, so every value is valid.
    """
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_js_number(value))  # finite: the C encoder refuses NaN and infinities
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_encode_string(_key(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    else:  # pragma: no cover - the C encoder has refused it already
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _plain(value: object) -> bool:
    """Whether ``value`` is small and holds only what msgspec's encoder writes exactly as
    the ``json`` path does: ``str``, ``int``, ``bool``, ``None``, lists, tuples and dicts
    with ``str`` keys (checked by exact type, so no subclass slips through). Floats are
    left out: msgspec writes ``1e+21`` as ``1e21``, where ``JSON.stringify`` keeps the
    ``+``. The walk stops after ``_PLAIN_MAX_NODES`` nodes (so a cycle ends it too)."""
    stack: list[object] = [value]
    budget = _PLAIN_MAX_NODES
    while stack:
        budget -= 1
        if budget < 0:
            return False
        node = stack.pop()
        kind = type(node)
        if kind is str or kind is int or kind is bool or node is None:
            continue
        if isinstance(node, list | tuple) and (kind is list or kind is tuple):
            stack.extend(node)
        elif isinstance(node, dict) and kind is dict:
            for key, item in node.items():
                if type(key) is not str:
                    return False
                stack.append(item)
        else:
            return False
    return True


def dumps(value: JsonValue) -> str:
    """Serialize ``value`` as compact JSON, the way ``JSON.stringify`` does.

    With the ``speedups`` extra, a small value of strings, integers, booleans, nulls,
    arrays and objects is written by msgspec's encoder (about 10 times faster on an ack),
    which writes those exactly as the ``json`` path does (a differential test checks it).

    Raises:
        TypeError: ``value`` holds something JSON cannot represent (``bytes`` included:
            binary attachments are taken out before this is called).
        ValueError: ``value`` holds a NaN or infinite float, a lone UTF-16 surrogate or
            a reference cycle.
        RecursionError: ``value`` is nested deeper than the interpreter allows.
    """
    if _fast_encode is not None and _plain(value):
        # (A lone surrogate raises UnicodeEncodeError here, as on the json path.)
        return _fast_encode(value).decode()
    text = _encode(value)
    # Python's repr writes an exponent where JavaScript does not ("1e-05") or pads it
    # ("1e-07" for "1e-7") only for non-integral floats below 1e-4, which all print with
    # "e-0". A string can hold that too: then the slow path just writes the same text.
    if "e-0" in text:
        out: list[str] = []
        _write(value, out)
        text = "".join(out)
    if not text.isascii():
        # A lone surrogate cannot be sent as UTF-8; refuse it here rather than let the
        # transport fail while writing someone else's broadcast.
        text.encode("utf-8")
    return text


def exceeds_depth(value: JsonValue, max_depth: int) -> bool:
    """Tell whether arrays/objects in ``value`` nest more than ``max_depth`` levels.

    A scalar has depth 0 and ``[]`` has depth 1. The walk is iterative and stops at the
    first container past the limit, so it is safe on any input.
    """
    if not isinstance(value, list | dict):
        return False
    stack: list[tuple[list[JsonValue] | dict[str, JsonValue], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            return True
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
    return False


def _has_lone_surrogate(value: JsonValue) -> bool:
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: list[str] = [item]
        elif isinstance(item, list):
            stack.extend(item)
            continue
        elif isinstance(item, dict):
            stack.extend(item.values())
            strings = list(item)
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


def loads(text: str, start: int = 0, *, max_depth: int) -> JsonValue:
    """Parse the JSON document in ``text[start:]``, as ``JSON.parse`` would, but strictly.

    Trailing JSON whitespace is allowed, as ``JSON.parse`` allows it; leading whitespace
    is not (no Socket.IO encoder writes any).

    Args:
        text: The whole frame; parsing starts at ``start`` without copying the tail.
        start: Index of the first character of the document.
        max_depth: Deepest allowed nesting of arrays and objects.

    Raises:
        RemoteProtocolError: Not JSON, trailing garbage, NaN/Infinity, a number out of
            range, an escaped lone surrogate, or nesting deeper than ``max_depth``.
    """
    if _fast_decode is not None and text[start : start + 1] not in _NOT_FAST:
        try:
            # msgspec and json agree on what is JSON and on the values (the same number
            # types, ints of at most sys.get_int_max_str_digits() digits, the last of
            # duplicate keys); msgspec refuses escaped lone surrogates and numbers that
            # overflow a double outright. Leading whitespace, which msgspec would skip,
            # never gets here.
            value = _fast_decode(text[start:] if start else text)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            pass  # the json path below says why, in its own words
        else:
            if not _too_deep(text, start, value, max_depth):
                return value
    return _loads_json(text, start, max_depth)


def _too_deep(text: str, start: int, value: JsonValue, max_depth: int) -> bool:
    # Counting brackets is a cheap upper bound on the nesting depth (brackets inside
    # strings count too); only a payload that might be too deep pays for the walk.
    return text.count("[", start) + text.count("{", start) > max_depth and exceeds_depth(
        value, max_depth
    )


def _loads_json(text: str, start: int, max_depth: int) -> JsonValue:
    value: JsonValue
    end: int
    try:
        value, end = _raw_decode(text, start)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, our NaN/Infinity/overflow refusals and
        # int() refusing more than sys.get_int_max_str_digits() digits. The C scanner
        # raises RecursionError on absurd nesting instead of overflowing the stack.
        raise RemoteProtocolError("invalid JSON payload") from None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        raise RemoteProtocolError("trailing data after the JSON payload")
    if _too_deep(text, start, value, max_depth):
        raise RemoteProtocolError("JSON payload nested too deeply")
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(value):
        raise RemoteProtocolError("JSON payload holds a lone UTF-16 surrogate")
    return value
