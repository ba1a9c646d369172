"""The inter-node message codec (roomcast.engine.adapters.cluster): round trips, and
nothing but RemoteProtocolError on bad input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.engine.adapters.base import BroadcastOptions, SocketInfo
from roomcast.engine.adapters.cluster import (
    MAGIC,
    PROTOCOL_VERSION,
    AckAnswerPart,
    AckBroadcast,
    AckFinished,
    AckRecipients,
    AddSockets,
    Applied,
    Body,
    BroadcastBody,
    Bye,
    DelSockets,
    DisconnectSockets,
    Envelope,
    Failed,
    FetchSockets,
    Heartbeat,
    Hello,
    HoldsSession,
    RequestBody,
    ResponseBody,
    ServerAnswer,
    ServerSideEmit,
    SocketsFound,
    decode_envelope,
    encode_envelope,
    sender_of,
)
from roomcast.engine.handshake import Handshake
from roomcast.protocol import JsonValue, RemoteProtocolError

CLUSTER = "rc"
MAX = 1 << 20

text = st.text(max_size=12)
names = st.frozensets(text, max_size=4)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
json_args = st.lists(json_values, max_size=4).map(tuple)
options = st.builds(
    BroadcastOptions,
    rooms=names,
    except_rooms=names,
    except_sids=names,
    volatile=st.booleans(),
)
handshakes = st.builds(
    Handshake,
    auth=json_values,
    headers=st.dictionaries(text, text, max_size=3),
    query=st.dictionaries(text, text, max_size=3),
    address=st.none() | text,
    time=st.floats(allow_nan=False),
)


def infos(namespace: str, node: str) -> st.SearchStrategy[SocketInfo]:
    return st.builds(
        SocketInfo,
        sid=text,
        namespace=st.just(namespace),
        rooms=names,
        data=st.dictionaries(text, json_values, max_size=3),
        handshake=handshakes,
        node=st.just(node),
    )


operations = st.one_of(
    st.builds(FetchSockets, opts=options),
    st.builds(AddSockets, opts=options, rooms=names),
    st.builds(DelSockets, opts=options, rooms=names),
    st.builds(DisconnectSockets, opts=options, close=st.booleans()),
    st.builds(ServerSideEmit, event=text, args=json_args, want_answer=st.booleans()),
    st.builds(
        AckBroadcast,
        opts=options,
        event=text,
        args=json_args,
        within=st.floats(min_value=0, max_value=1e6),
    ),
    st.builds(HoldsSession, node=text, pid=text),
)


def parts(namespace: str, node: str) -> st.SearchStrategy[object]:
    return st.one_of(
        st.builds(SocketsFound, sockets=st.lists(infos(namespace, node), max_size=3)),
        st.builds(Applied, count=st.integers(min_value=0, max_value=2**32)),
        st.builds(ServerAnswer, args=st.none() | json_args),
        st.builds(AckRecipients, sids=names),
        st.builds(AckAnswerPart, sid=text, args=json_args),
        st.just(AckFinished()),
        st.builds(Failed, reason=text),
    )


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    namespace = draw(st.just("/") | text.map(lambda t: "/" + t))
    node = draw(text)
    body: Body = draw(
        st.one_of(
            st.just(Heartbeat()),
            st.just(Hello()),
            st.just(Bye()),
            st.builds(
                BroadcastBody,
                opts=options,
                frames=st.lists(text | st.binary(max_size=16), max_size=3),
            ),
            st.builds(
                RequestBody, request_id=st.integers(min_value=0, max_value=2**40), op=operations
            ),
            st.builds(
                ResponseBody,
                request_id=st.integers(min_value=0, max_value=2**40),
                part=parts(namespace, node),
            ),
        )
    )
    return Envelope(
        node=node,
        seq=draw(st.integers(min_value=0, max_value=2**63)),
        namespace=namespace,
        body=body,
    )


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_round_trip(envelope: Envelope) -> None:
    assert decode_envelope(CLUSTER, encode_envelope(CLUSTER, envelope), max_bytes=MAX) == envelope


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_envelope(CLUSTER, data, max_bytes=MAX)


structured = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=10)
    | st.floats()
    | text
    | st.binary(max_size=4),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    text,
    st.integers(min_value=0, max_value=3),
    structured,
)
def test_malformed_bodies_raise_only_remote_protocol_error(
    kind: int, node: str, seq: int, body: object
) -> None:
    data = msgpack.packb([MAGIC, PROTOCOL_VERSION, CLUSTER, kind, node, seq, "/", body])
    with contextlib.suppress(RemoteProtocolError):
        decode_envelope(CLUSTER, data, max_bytes=MAX)


def _raw(*fields: object) -> bytes:
    packed: bytes = msgpack.packb(list(fields))
    return packed


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_raw(MAGIC, PROTOCOL_VERSION, "other", 1, "n", 0, "", []), "cluster 'other'"),
        (_raw(MAGIC, PROTOCOL_VERSION + 1, CLUSTER, 1, "n", 0, "", []), "protocol version"),
        (_raw("socket.io", PROTOCOL_VERSION, CLUSTER, 1, "n", 0, "", []), "not a roomcast"),
        (_raw(MAGIC, PROTOCOL_VERSION, CLUSTER, 99, "n", 0, "", []), "unknown kind"),
        (_raw(MAGIC, PROTOCOL_VERSION, CLUSTER, 1, "n", -1, "", []), "seq"),
        (b"\x93\x01\x02", "not msgpack"),
    ],
)
def test_foreign_messages_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode_envelope(CLUSTER, data, max_bytes=MAX)


def test_oversized_messages_are_refused_before_decoding() -> None:
    data = encode_envelope(CLUSTER, Envelope(node="n", seq=1, namespace="/", body=Heartbeat()))
    with pytest.raises(RemoteProtocolError, match="more than"):
        decode_envelope(CLUSTER, data, max_bytes=len(data) - 1)


def test_unencodable_socket_data_travels_as_its_repr() -> None:
    info = SocketInfo(
        sid="s",
        namespace="/",
        rooms=frozenset({"s"}),
        data={"when": object.__new__(type("Opaque", (), {"__repr__": lambda self: "<opaque>"}))},
        handshake=Handshake(auth=None, headers={}, query={}, address=None, time=0.0),
        node="n",
    )
    envelope = Envelope(
        node="n",
        seq=1,
        namespace="/",
        body=ResponseBody(request_id=1, part=SocketsFound(sockets=[info])),
    )
    decoded = decode_envelope(CLUSTER, encode_envelope(CLUSTER, envelope), max_bytes=MAX)
    assert isinstance(decoded.body, ResponseBody)
    assert isinstance(decoded.body.part, SocketsFound)
    assert decoded.body.part.sockets[0].data == {"when": "<opaque>"}


@settings(max_examples=100, deadline=None)
@given(envelopes())
def test_sender_is_read_from_the_header(envelope: Envelope) -> None:
    assert sender_of(encode_envelope(CLUSTER, envelope)) == envelope.node


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_sender_of_arbitrary_bytes_is_a_string_or_none(data: bytes) -> None:
    assert sender_of(data) is None or isinstance(sender_of(data), str)
