"""Cross-check the Engine.IO / Socket.IO codecs against the real JavaScript parsers.

``tests/js/crosscheck.mjs`` builds a deterministic corpus with npm's ``engine.io-parser``,
``socket.io-parser`` and ``socket.io-msgpack-parser`` (see that file's header for the
format): each case is a logical packet plus the frames the JS encoder produced for it.
Here we check, per kind of case, that

* our decoders turn the JS frames into exactly the logical packet (types included:
  ``True`` is not ``1``, ``1`` is not ``1.0``, ``bytes`` is not ``str``);
* our encoders' frames, fed back to a second Node process, decode in JS to the same
  logical packet;
* our frames are byte-identical to the JS ones where the format is deterministic (the
  Engine.IO frames and payloads, socket.io-parser's text, and msgpack maps in the key
  order a Node ``socket.io`` server writes);
* inputs the JS decoders reject are rejected by ours with ``RemoteProtocolError``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeAlias, cast

import attrs
import pytest

from roomcast.protocol._eio import (
    EioPacket,
    EioPacketType,
    decode_payload,
    decode_ws_frame,
    encode_payload,
    encode_ws_frame,
)
from roomcast.protocol._errors import ProtocolError, RemoteProtocolError
from roomcast.protocol._sio import (
    JSON_PARSER,
    MSGPACK_PARSER,
    Ack,
    Connect,
    ConnectError,
    Disconnect,
    Event,
    JsonValue,
    Parser,
    SioPacket,
)

pytestmark = pytest.mark.node

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None
"""A value as read from the JSON lines exchanged with Node."""
Frame: TypeAlias = str | bytes
Logical: TypeAlias = dict[str, JsonValue]
"""A packet in the JS-side shape, with binary as ``bytes`` (see crosscheck.mjs)."""

SCRIPT: Final = "crosscheck.mjs"
NODE_TIMEOUT: Final = 60.0
PARSERS: Final[Mapping[str, Parser]] = {"json": JSON_PARSER, "msgpack": MSGPACK_PARSER}

ENCODE_KINDS: Final = ("eio_ws", "eio_payload", "sio_json", "sio_msgpack", "stack_payload")
REJECT_KINDS: Final = ("eio_reject", "sio_reject")

# Where roomcast deliberately differs from the JS parsers. Each maps a case id to the
# reason; the tests check that the difference is exactly the documented one.
STRICTER_THAN_JS: Final[Mapping[str, str]] = {
    # protocol/_json.py: an escaped lone surrogate cannot be re-sent as UTF-8 to anyone,
    # so the decoder refuses it, and the encoder must refuse to write one too.
    "sio-json-event-lone-surrogates": "lone UTF-16 surrogates are refused",
}
DECODES_DIFFERENTLY: Final[Mapping[str, Logical]] = {
    # case id -> the packet our decoder must yield instead of the JS one (and why).
}
LENIENT_THAN_JS: Final[Mapping[str, Logical]] = {
    # python-socketio's msgpack packets always carry "data", nil when there is none
    # (socketio/packet.py _to_dict); socket.io-msgpack-parser refuses nil CONNECT data.
    "sio-reject-msgpack-connect-null": {"type": 0, "nsp": "/"},
}


@attrs.frozen(kw_only=True)
class Case:
    """One corpus line."""

    id: str
    kind: str
    raw: dict[str, Json]


@attrs.frozen(kw_only=True)
class Encoded:
    """What our encoder produced for one case: frames (or a polling body), or an error."""

    frames: tuple[Frame, ...] = ()
    body: str | None = None
    error: str | None = None


# ----------------------------------------------------------------------------- helpers


def _run_node(js_dir: Path, mode: str, stdin: bytes = b"") -> list[dict[str, Json]]:
    """Run ``node crosscheck.mjs <mode>`` and parse its JSON-lines output."""
    result = subprocess.run(
        ["node", SCRIPT, mode],
        cwd=js_dir,
        input=stdin,
        capture_output=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"node {SCRIPT} {mode} failed:\n{result.stderr.decode(errors='replace')}")
    # Split on "\n" only: U+2028 and U+2029 appear raw inside the JSON strings.
    lines = result.stdout.decode("utf-8").split("\n")
    return [cast("dict[str, Json]", json.loads(line)) for line in lines if line]


def _from_logical(value: Json) -> JsonValue:
    """Turn ``{"$bin": base64}`` back into ``bytes``, recursively."""
    if isinstance(value, list):
        return [_from_logical(item) for item in value]
    if isinstance(value, dict):
        if list(value) == ["$bin"]:
            return base64.b64decode(cast("str", value["$bin"]), validate=True)
        return {key: _from_logical(item) for key, item in value.items()}
    return value


def _to_logical(value: JsonValue) -> Json:
    """Inverse of ``_from_logical``, for sending values to Node."""
    if isinstance(value, bytes):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_to_logical(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_logical(item) for key, item in value.items()}
    return value


def _has_bytes(value: object) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, list | tuple):
        return any(_has_bytes(item) for item in value)
    if isinstance(value, dict):
        return any(_has_bytes(item) for item in value.values())
    return False


def _canon(value: object) -> object:
    """A form where equal means same JSON type, value and key order (``True != 1 != 1.0``)."""
    if isinstance(value, bool | int | float | str | bytes) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, list):
        return ("list", tuple(_canon(item) for item in value))
    if isinstance(value, tuple):  # only the args tuple of a record; JsonValue has no tuple
        return ("tuple", tuple(_canon(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple((_canon(k), _canon(v)) for k, v in value.items()))
    return ("other", repr(value))


def _frame_in(desc: Json) -> Frame:
    mapping = cast("dict[str, str]", desc)
    if "text" in mapping:
        return mapping["text"]
    return base64.b64decode(mapping["bin"], validate=True)


def _frame_out(frame: Frame) -> dict[str, Json]:
    if isinstance(frame, str):
        return {"text": frame}
    return {"bin": base64.b64encode(frame).decode("ascii")}


def _frames(case: Case) -> tuple[Frame, ...]:
    return tuple(_frame_in(f) for f in cast("list[Json]", case.raw["frames"]))


def _js_encoding(case: Case) -> Encoded:
    """The JS encoder's output for a case, in the shape of ours."""
    raw = case.raw
    if "body" in raw:
        return Encoded(body=cast("str", raw["body"]))
    if "frame" in raw:
        return Encoded(frames=(_frame_in(raw["frame"]),))
    return Encoded(frames=_frames(case))


def _eio_packet(logical: Json) -> EioPacket:
    mapping = cast("dict[str, Json]", logical)
    data = _from_logical(mapping["data"])
    assert isinstance(data, str | bytes)
    return EioPacket(type=EioPacketType(cast("int", mapping["type"])), data=data)


def _eio_logical(packet: EioPacket) -> Logical:
    return {"type": int(packet.type), "data": packet.data}


def _sio_logical(packet: SioPacket) -> Logical:
    """Our record in the JS shape ``{type, nsp, data?, id?}``."""
    out: Logical
    match packet:
        case Connect(namespace=nsp, data=data):
            out = {"type": 0, "nsp": nsp}
            if data is not None:
                out["data"] = data
        case Disconnect(namespace=nsp):
            out = {"type": 1, "nsp": nsp}
        case Event(name=name, args=args, namespace=nsp, ack_id=ack_id):
            out = {"type": 2, "nsp": nsp, "data": [name, *args]}
            if ack_id is not None:
                out["id"] = ack_id
        case Ack(ack_id=ack_id, args=args, namespace=nsp):
            out = {"type": 3, "nsp": nsp, "data": list(args), "id": ack_id}
        case ConnectError(namespace=nsp, data=data):
            out = {"type": 4, "nsp": nsp}
            if data is not None:
                out["data"] = data
    return out


def _sio_record(logical: Logical) -> SioPacket:
    """The record our encoder should turn into the JS packet ``logical``."""
    nsp = cast("str", logical["nsp"])
    data = logical.get("data")
    ack_id = cast("int | None", logical.get("id"))
    match logical["type"]:
        case 0:
            return Connect(namespace=nsp, data=data)
        case 1:
            return Disconnect(namespace=nsp)
        case 2:
            assert isinstance(data, list)
            assert isinstance(data[0], str)
            return Event(name=data[0], args=data[1:], namespace=nsp, ack_id=ack_id)
        case 3:
            assert isinstance(data, list)
            assert ack_id is not None
            return Ack(ack_id=ack_id, args=data, namespace=nsp)
        case 4:
            return ConnectError(namespace=nsp, data=data)
    raise AssertionError(f"unexpected packet type in corpus: {logical['type']!r}")


def _expected(case: Case) -> list[Logical]:
    """The logical packet(s) of a case, binary as ``bytes``."""
    raw = case.raw
    if "packets" in raw:
        return [cast("Logical", _from_logical(p)) for p in cast("list[Json]", raw["packets"])]
    return [cast("Logical", _from_logical(raw["packet"]))]


def _sio_decode(parser: Parser, frames: Iterable[Frame]) -> list[Logical]:
    """Feed frames to one of our decoders; every complete packet, in the JS shape."""
    decoder = parser.decoder()
    return [_sio_logical(p) for f in frames if (p := decoder.receive(f)) is not None]


def _short(value: object, limit: int = 240) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _check_all(failures: Sequence[str], what: str) -> None:
    if failures:
        shown = "\n".join(failures[:20])
        more = f"\n... and {len(failures) - 20} more" if len(failures) > 20 else ""
        pytest.fail(f"{len(failures)} case(s) where {what}:\n{shown}{more}", pytrace=False)


# ----------------------------------------------------------------------------- ours


def _decode_ours(case: Case) -> list[Logical]:
    """Decode a case's JS encoding with our decoders (may raise ProtocolError)."""
    raw = case.raw
    match case.kind:
        case "eio_ws":
            return [_eio_logical(decode_ws_frame(_frame_in(raw["frame"])))]
        case "eio_payload":
            return [_eio_logical(p) for p in decode_payload(cast("str", raw["body"]))]
        case "sio_json" | "sio_msgpack":
            return _sio_decode(PARSERS[case.kind[4:]], _frames(case))
        case "stack_payload":
            messages: list[Frame] = []
            for packet in decode_payload(cast("str", raw["body"])):
                assert packet.type is EioPacketType.MESSAGE
                messages.append(packet.data)
            return _sio_decode(PARSERS[cast("str", raw["parser"])], messages)
    raise AssertionError(f"no decoder for kind {case.kind}")


def _encode_ours(case: Case) -> Encoded:
    """Encode a case's logical packet(s) with our encoders."""
    expected = _expected(case)
    try:
        match case.kind:
            case "eio_ws":
                packet = _eio_packet(case.raw["packet"])
                return Encoded(frames=(encode_ws_frame(packet),))
            case "eio_payload":
                packets = [_eio_packet(p) for p in cast("list[Json]", case.raw["packets"])]
                return Encoded(body=encode_payload(packets))
            case "sio_json" | "sio_msgpack":
                return Encoded(frames=PARSERS[case.kind[4:]].encode(_sio_record(expected[0])))
            case "stack_payload":
                parser = PARSERS[cast("str", case.raw["parser"])]
                messages = [
                    EioPacket(type=EioPacketType.MESSAGE, data=frame)
                    for logical in expected
                    for frame in parser.encode(_sio_record(logical))
                ]
                return Encoded(body=encode_payload(messages))
    except ProtocolError as exc:
        return Encoded(error=f"{type(exc).__name__}: {exc}")
    raise AssertionError(f"no encoder for kind {case.kind}")


def _js_request(case: Case, encoded: Encoded) -> dict[str, Json]:
    request: dict[str, Json] = {"id": case.id}
    if case.kind in ("sio_json", "sio_msgpack"):
        request |= {"kind": "sio", "parser": case.kind[4:]}
    else:
        request["kind"] = case.kind
    if "parser" in case.raw:
        request["parser"] = case.raw["parser"]
    if case.kind == "eio_ws":
        request["frame"] = _frame_out(encoded.frames[0])
    elif encoded.body is not None:
        request["body"] = encoded.body
    else:
        request["frames"] = [_frame_out(f) for f in encoded.frames]
    return request


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(js_peers: Path) -> list[Case]:
    """The JS-built corpus, parsed."""
    cases = []
    for line in _run_node(js_peers, "corpus"):
        cases.append(Case(id=cast("str", line["id"]), kind=cast("str", line["kind"]), raw=line))
    return cases


@pytest.fixture(scope="module")
def ours(corpus: list[Case]) -> dict[str, Encoded]:
    """Our encoding of every encodable case."""
    return {c.id: _encode_ours(c) for c in corpus if c.kind in ENCODE_KINDS}


@pytest.fixture(scope="module")
def js_decoded(js_peers: Path, corpus: list[Case], ours: dict[str, Encoded]) -> dict[str, Json]:
    """What the JS parsers make of our encodings, by case id (one Node process for all)."""
    requests = [
        _js_request(c, ours[c.id]) for c in corpus if c.id in ours and ours[c.id].error is None
    ]
    stdin = "\n".join(json.dumps(r) for r in requests).encode("utf-8")
    return {cast("str", r["id"]): r for r in _run_node(js_peers, "decode", stdin)}


def _cases(corpus: list[Case], kind: str) -> list[Case]:
    selected = [c for c in corpus if c.kind == kind]
    assert selected, f"no {kind} cases in the corpus"
    return selected


# ----------------------------------------------------------------------------- tests


def test_corpus_covers_the_issue(corpus: list[Case]) -> None:
    """At least 200 encoded packets, spanning every packet type, parser and edge case."""
    encoded = [c for c in corpus if c.kind in ENCODE_KINDS]
    assert len(encoded) >= 200
    assert {c.kind for c in corpus} == {*ENCODE_KINDS, *REJECT_KINDS}

    eio_packets = [p for c in _cases(corpus, "eio_ws") for p in _expected(c)]
    assert {p["type"] for p in eio_packets} == set(range(7))
    assert any(isinstance(p["data"], bytes) for p in eio_packets)
    mixed = [
        c
        for c in _cases(corpus, "eio_payload")
        if _has_bytes(_expected(c)) and any(isinstance(p["data"], str) for p in _expected(c))
    ]
    assert mixed, "no polling payload mixes text and binary packets"
    for kind in ("sio_json", "sio_msgpack"):
        packets = [p for c in _cases(corpus, kind) for p in _expected(c)]
        assert {p["type"] for p in packets} == set(range(5)), kind
        assert any(p["nsp"] != "/" for p in packets), kind
        assert any(p.get("id") == 0 for p in packets), kind
        assert any(p.get("id") == 2**53 - 1 for p in packets), kind
        assert any(p["type"] == 2 and _has_bytes(p) for p in packets), kind
        assert any(p["type"] == 3 and _has_bytes(p) for p in packets), kind
        assert any("😀" in repr(p) for p in packets), kind
    assert any(c.raw.get("canonical") is False for c in corpus if c.kind == "sio_msgpack")


@pytest.mark.parametrize("kind", ENCODE_KINDS)
def test_we_decode_what_js_encodes(corpus: list[Case], kind: str) -> None:
    """Our decoders yield exactly the packet the JS encoder was given."""
    failures = []
    for case in _cases(corpus, kind):
        expected = _expected(case)
        try:
            got = _decode_ours(case)
        except RemoteProtocolError as exc:
            if case.id in STRICTER_THAN_JS:
                continue
            given = _js_encoding(case)
            failures.append(
                f"{case.id}: input={_short(given)} ours=RemoteProtocolError({exc}) "
                f"theirs={_short(expected)}"
            )
            continue
        if case.id in STRICTER_THAN_JS:
            reason = STRICTER_THAN_JS[case.id]
            failures.append(f"{case.id}: expected a refusal ({reason}), got {_short(got)}")
            continue
        if case.id in DECODES_DIFFERENTLY:
            expected = [DECODES_DIFFERENTLY[case.id]]
        if _canon(got) != _canon(expected):
            failures.append(f"{case.id}: ours={_short(got)} theirs={_short(expected)}")
    _check_all(failures, "our decoder disagrees with the JS packet")


@pytest.mark.parametrize("kind", REJECT_KINDS)
def test_we_reject_what_js_rejects(corpus: list[Case], kind: str) -> None:
    """Frames and bodies the JS decoders refuse make ours raise RemoteProtocolError."""
    failures = []
    for case in _cases(corpus, kind):
        raw = case.raw
        try:
            if "body" in raw:
                got: object = decode_payload(cast("str", raw["body"]))
            elif "frame" in raw:
                got = decode_ws_frame(_frame_in(raw["frame"]))
            else:
                got = _sio_decode(PARSERS[cast("str", raw["parser"])], _frames(case))
        except RemoteProtocolError:
            if case.id in LENIENT_THAN_JS:
                failures.append(f"{case.id}: refused, but we accept it on purpose")
            continue
        if case.id in LENIENT_THAN_JS and _canon(got) == _canon([LENIENT_THAN_JS[case.id]]):
            continue
        failures.append(f"{case.id}: input={_short(_js_encoding(case))} ours={_short(got)}")
    _check_all(failures, "JS rejects the input but our decoder accepts it")


@pytest.mark.parametrize("kind", ENCODE_KINDS)
def test_js_decodes_what_we_encode(
    corpus: list[Case], ours: dict[str, Encoded], js_decoded: dict[str, Json], kind: str
) -> None:
    """Our encoders' output decodes, in the JS parsers, to the original packet."""
    failures = []
    for case in _cases(corpus, kind):
        encoded = ours[case.id]
        if case.id in STRICTER_THAN_JS:
            if encoded.error is None:
                reason = STRICTER_THAN_JS[case.id]
                failures.append(
                    f"{case.id}: our decoder refuses this ({reason}), so our encoder must "
                    f"refuse it too, but it wrote {_short(encoded)}"
                )
            continue
        if encoded.error is not None:
            failures.append(f"{case.id}: our encoder refused: {encoded.error}")
            continue
        answer = cast("dict[str, Json]", js_decoded[case.id])
        if not answer["ok"]:
            failures.append(f"{case.id}: ours={_short(encoded)} JS error={answer['error']}")
            continue
        got = [_from_logical(p) for p in cast("list[Json]", answer["packets"])]
        expected = _expected(case)
        if _canon(got) != _canon(expected):
            failures.append(
                f"{case.id}: ours={_short(encoded)} JS decoded={_short(got)} "
                f"expected={_short(expected)}"
            )
    _check_all(failures, "the JS decoder reads our encoding differently")


@pytest.mark.parametrize("kind", ENCODE_KINDS)
def test_our_encoding_is_byte_identical(
    corpus: list[Case], ours: dict[str, Encoded], kind: str
) -> None:
    """Where the format is deterministic, we write exactly the bytes the JS encoder writes.

    msgpack cases marked non-canonical (client-shaped packets, typed arrays) are skipped:
    a Node server would not send those bytes either.
    """
    failures = []
    for case in _cases(corpus, kind):
        if case.raw.get("canonical") is False or case.id in STRICTER_THAN_JS:
            continue
        encoded = ours[case.id]
        if encoded.error is not None:
            continue  # reported by test_js_decodes_what_we_encode
        theirs = _js_encoding(case)
        if encoded != theirs:
            failures.append(f"{case.id}: ours={_short(encoded)} theirs={_short(theirs)}")
    _check_all(failures, "our bytes differ from the JS encoder's")


def test_harness_detects_differences(js_peers: Path, corpus: list[Case]) -> None:
    """The comparison is strict and the JS decode mode reports errors (the checks can fail)."""
    assert _canon([1]) != _canon([True])
    assert _canon([1]) != _canon([1.0])
    assert _canon({"a": 1, "b": 2}) != _canon({"b": 2, "a": 1})
    assert _canon(b"x") != _canon("x")

    case = next(c for c in corpus if c.id == "sio-json-event-ack-42")
    text = cast("str", _frames(case)[0])
    tampered = text.replace('"req"', '"rex"')
    requests = [
        {"id": "tampered", "kind": "sio", "parser": "json", "frames": [{"text": tampered}]},
        {"id": "broken", "kind": "sio", "parser": "json", "frames": [{"text": text[:-1]}]},
        {"id": "bad-eio", "kind": "eio_ws", "frame": {"text": "9"}},
    ]
    stdin = "\n".join(json.dumps(r) for r in requests).encode("utf-8")
    answers = {cast("str", r["id"]): r for r in _run_node(js_peers, "decode", stdin)}
    packets = cast("list[Json]", answers["tampered"]["packets"])
    assert _canon([_from_logical(p) for p in packets]) != _canon(_expected(case))
    assert answers["broken"]["ok"] is False
    assert answers["bad-eio"]["ok"] is False
