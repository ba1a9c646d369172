"""Socket.IO namespace connections: the server and client state machines."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from roomcast.protocol._limits import Limits
from roomcast.protocol._sio import (
    JSON_PARSER,
    MSGPACK_PARSER,
    Ack,
    Connect,
    ConnectError,
    Decoder,
    Disconnect,
    Event,
    JsonValue,
    Parser,
    SioPacket,
)
from roomcast.protocol._sio_state import (
    AckReceived,
    ConnectAccepted,
    ConnectRefused,
    ConnectRequested,
    DisconnectRequested,
    EventReceived,
    NamespaceState,
    SioClientConnection,
    SioEvent,
    SioServerConnection,
)

S = NamespaceState


def connected_server(*namespaces: str) -> SioServerConnection:
    server = SioServerConnection()
    for index, namespace in enumerate(namespaces):
        server.receive(Connect(namespace=namespace))
        server.accept(namespace, f"sid{index}")
    return server


def connected_client(*namespaces: str) -> SioClientConnection:
    client = SioClientConnection()
    for namespace in namespaces:
        client.connect(namespace)
        client.receive(Connect(namespace=namespace, data={"sid": "s"}))
    return client


# --------------------------------------------------------------------------- server


def test_server_connect_accept() -> None:
    server = SioServerConnection()
    assert server.state("/") is S.DISCONNECTED
    assert server.receive(Connect(data={"token": "t"})) == [
        ConnectRequested(namespace="/", auth={"token": "t"})
    ]
    assert server.state("/") is S.CONNECTING
    assert server.connected_namespaces() == ()
    assert server.accept("/", "abc") == Connect(namespace="/", data={"sid": "abc"})
    assert server.state("/") is S.CONNECTED
    assert server.connected_namespaces() == ("/",)


def test_server_accept_with_recovery_pid() -> None:
    server = SioServerConnection()
    server.receive(Connect(namespace="/chat"))
    assert server.accept("/chat", "s", pid="p") == Connect(
        namespace="/chat", data={"sid": "s", "pid": "p"}
    )


def test_server_refuse_forgets_the_namespace() -> None:
    server = SioServerConnection()
    server.receive(Connect(namespace="/admin"))
    refusal = server.refuse("/admin", {"message": "not authorized", "data": None})
    assert refusal == ConnectError(
        namespace="/admin", data={"message": "not authorized", "data": None}
    )
    assert server.state("/admin") is S.DISCONNECTED
    # The client may try again.
    assert server.receive(Connect(namespace="/admin")) == [
        ConnectRequested(namespace="/admin", auth=None)
    ]


ServerCall: TypeAlias = Callable[[SioServerConnection], object]


@pytest.mark.parametrize(
    ("call", "answers_connect"),
    [
        (lambda s: s.accept("/", "sid"), True),
        (lambda s: s.refuse("/", None), True),
        (lambda s: s.disconnect("/"), False),
        (lambda s: s.new_ack_id("/"), False),
    ],
)
def test_server_local_moves_need_the_right_state(call: ServerCall, answers_connect: bool) -> None:
    with pytest.raises(LocalProtocolError):
        call(SioServerConnection())  # never heard of "/"
    connecting = SioServerConnection()
    connecting.receive(Connect())
    if answers_connect:
        call(connecting)  # accept and refuse answer a CONNECT...
    with pytest.raises(LocalProtocolError):
        call(connecting)  # ... once; disconnect and new_ack_id need CONNECTED


def test_server_accept_twice_and_refuse_after_accept_fail() -> None:
    server = connected_server("/")
    with pytest.raises(LocalProtocolError):
        server.accept("/", "again")
    with pytest.raises(LocalProtocolError):
        server.refuse("/", None)


@pytest.mark.parametrize(
    "packet",
    [
        Event(name="e"),
        Ack(ack_id=0),
        Disconnect(),
        ConnectError(data="x"),
    ],
)
def test_server_refuses_packets_for_unknown_namespaces(packet: SioPacket) -> None:
    with pytest.raises(RemoteProtocolError):
        SioServerConnection().receive(packet)


@pytest.mark.parametrize(
    "packet",
    [Connect(), Event(name="e"), Ack(ack_id=0), Disconnect(), ConnectError()],
)
def test_server_refuses_everything_while_connecting(packet: SioPacket) -> None:
    server = SioServerConnection()
    server.receive(Connect())
    with pytest.raises(RemoteProtocolError):
        server.receive(packet)


@pytest.mark.parametrize("packet", [Connect(), Connect(data={"a": 1}), ConnectError()])
def test_server_refuses_connect_or_connect_error_when_connected(packet: SioPacket) -> None:
    with pytest.raises(RemoteProtocolError):
        connected_server("/").receive(packet)


def test_server_events() -> None:
    server = connected_server("/", "/chat")
    assert server.receive(Event(name="msg", args=(1, [2]), namespace="/chat", ack_id=4)) == [
        EventReceived(namespace="/chat", name="msg", args=(1, [2]), ack_id=4)
    ]
    assert server.receive(Event(name="x")) == [
        EventReceived(namespace="/", name="x", args=(), ack_id=None)
    ]


def test_server_ack_ids_count_per_namespace() -> None:
    server = connected_server("/", "/chat")
    assert [server.new_ack_id("/") for _ in range(3)] == [0, 1, 2]
    assert server.new_ack_id("/chat") == 0
    assert server.new_ack_id("/") == 3


def test_server_acks() -> None:
    server = connected_server("/")
    first, second = server.new_ack_id("/"), server.new_ack_id("/")
    assert server.receive(Ack(ack_id=second, args=("ok",))) == [
        AckReceived(namespace="/", ack_id=second, args=("ok",))
    ]
    assert server.receive(Ack(ack_id=second)) == []  # answered already
    assert server.receive(Ack(ack_id=99)) == []  # never asked
    server.cancel_ack("/", first)
    assert server.receive(Ack(ack_id=first)) == []  # timed out: the late answer is dropped
    server.cancel_ack("/", 12345)  # unknown ids and namespaces are fine
    server.cancel_ack("/nowhere", 0)


def test_server_ack_for_a_namespace_without_pending_acks() -> None:
    server = connected_server("/", "/b")
    server.new_ack_id("/")
    assert server.receive(Ack(ack_id=0, namespace="/b")) == []


def test_ack_ids_wrap_and_skip_pending() -> None:
    server = SioServerConnection(Limits(max_ack_id=2))
    server.receive(Connect())
    server.accept("/", "s")
    assert [server.new_ack_id("/") for _ in range(3)] == [0, 1, 2]
    with pytest.raises(LocalProtocolError):
        server.new_ack_id("/")  # 0, 1 and 2 all wait for an answer
    assert server.receive(Ack(ack_id=1)) != []
    assert server.new_ack_id("/") == 1  # wrapped past 2, skipped the pending 0
    server.cancel_ack("/", 2)
    server.cancel_ack("/", 0)
    assert server.new_ack_id("/") == 2
    assert server.new_ack_id("/") == 0


def test_client_disconnect_forgets_the_namespace() -> None:
    server = connected_server("/", "/chat")
    server.new_ack_id("/chat")
    server.new_ack_id("/chat")
    assert server.receive(Disconnect(namespace="/chat")) == [DisconnectRequested(namespace="/chat")]
    assert server.state("/chat") is S.DISCONNECTED
    assert server.connected_namespaces() == ("/",)
    with pytest.raises(RemoteProtocolError):
        server.receive(Event(name="late", namespace="/chat"))
    # Joining again starts from scratch: no pending acks, ids from 0.
    server.receive(Connect(namespace="/chat"))
    server.accept("/chat", "s2")
    assert server.receive(Ack(ack_id=0, namespace="/chat")) == []
    assert server.new_ack_id("/chat") == 0


def test_server_disconnect() -> None:
    server = connected_server("/", "/a", "/b")
    assert server.connected_namespaces() == ("/", "/a", "/b")
    assert server.disconnect("/a") == Disconnect(namespace="/a")
    assert server.connected_namespaces() == ("/", "/b")
    with pytest.raises(LocalProtocolError):
        server.disconnect("/a")
    with pytest.raises(RemoteProtocolError):
        server.receive(Event(name="e", namespace="/a"))


# --------------------------------------------------------------------------- client


def test_client_connect_accepted() -> None:
    client = SioClientConnection()
    assert client.connect("/chat", {"token": "t"}) == Connect(
        namespace="/chat", data={"token": "t"}
    )
    assert client.state("/chat") is S.CONNECTING
    assert client.receive(Connect(namespace="/chat", data={"sid": "s1", "pid": "p1"})) == [
        ConnectAccepted(namespace="/chat", sid="s1", pid="p1")
    ]
    assert client.state("/chat") is S.CONNECTED
    assert client.connected_namespaces() == ("/chat",)


def test_client_connect_accepted_without_pid() -> None:
    client = SioClientConnection()
    client.connect("/")
    assert client.receive(Connect(data={"sid": "s", "pid": 5})) == [
        ConnectAccepted(namespace="/", sid="s", pid=None)
    ]


def test_client_connect_refused() -> None:
    client = SioClientConnection()
    client.connect("/admin")
    refusal: JsonValue = {"message": "not authorized", "data": {"reason": "bad token"}}
    assert client.receive(ConnectError(namespace="/admin", data=refusal)) == [
        ConnectRefused(namespace="/admin", data=refusal)
    ]
    assert client.state("/admin") is S.DISCONNECTED
    client.connect("/admin", {"token": "s3cret"})  # may try again


def test_client_local_errors() -> None:
    client = SioClientConnection()
    with pytest.raises(LocalProtocolError):
        client.connect("/", "token")  # a string is a JsonValue, but not an object
    with pytest.raises(LocalProtocolError):
        client.connect("/", [1])
    client.connect("/")
    with pytest.raises(LocalProtocolError):
        client.connect("/")
    with pytest.raises(LocalProtocolError):
        client.disconnect("/")  # nothing to leave yet
    with pytest.raises(LocalProtocolError):
        client.new_ack_id("/")
    with pytest.raises(LocalProtocolError):
        client.disconnect("/other")


@pytest.mark.parametrize(
    "data",
    [None, {}, {"sid": 1}, {"id": "s"}, "sid"],
)
def test_client_refuses_connect_replies_without_sid(data: object) -> None:
    client = SioClientConnection()
    client.connect("/")
    with pytest.raises(RemoteProtocolError):
        client.receive(Connect(data=data))  # type: ignore[arg-type]  # some are not JsonValue


@pytest.mark.parametrize(
    "packet",
    [Connect(data={"sid": "again"}), ConnectError(data="late")],
)
def test_client_refuses_connect_answers_when_connected(packet: SioPacket) -> None:
    with pytest.raises(RemoteProtocolError):
        connected_client("/").receive(packet)


@pytest.mark.parametrize("packet", [Ack(ack_id=0), Disconnect()])
def test_client_refuses_traffic_while_connecting(packet: SioPacket) -> None:
    client = SioClientConnection()
    client.connect("/")
    with pytest.raises(RemoteProtocolError):
        client.receive(packet)


def test_client_takes_events_before_the_connect_answer() -> None:
    # A recovering Node server sends the missed events first, then CONNECT.
    client = SioClientConnection()
    client.connect("/")
    assert client.receive(Event(name="m", args=("missed", "offset-1"))) == [
        EventReceived(namespace="/", name="m", args=("missed", "offset-1"), ack_id=None)
    ]
    assert client.state("/") is S.CONNECTING
    assert client.receive(Connect(data={"sid": "s", "pid": "p"})) == [
        ConnectAccepted(namespace="/", sid="s", pid="p")
    ]


@pytest.mark.parametrize(
    "packet",
    [
        Connect(data={"sid": "s"}),
        ConnectError(data="x"),
        Event(name="e"),
        Ack(ack_id=0),
        Disconnect(),
    ],
)
def test_client_drops_packets_for_namespaces_it_is_not_in(packet: SioPacket) -> None:
    client = connected_client("/")
    client.disconnect("/")
    assert client.receive(packet) == []
    assert client.state("/") is S.DISCONNECTED


def test_client_traffic() -> None:
    client = connected_client("/", "/chat")
    ack_id = client.new_ack_id("/chat")
    assert ack_id == 0
    assert client.receive(Event(name="news", args=("hi",), namespace="/chat", ack_id=3)) == [
        EventReceived(namespace="/chat", name="news", args=("hi",), ack_id=3)
    ]
    assert client.receive(Ack(ack_id=0, args=(1,), namespace="/chat")) == [
        AckReceived(namespace="/chat", ack_id=0, args=(1,))
    ]
    assert client.receive(Ack(ack_id=0, namespace="/chat")) == []
    second = client.new_ack_id("/chat")
    client.cancel_ack("/chat", second)
    assert client.receive(Ack(ack_id=second, namespace="/chat")) == []
    assert client.receive(Disconnect(namespace="/chat")) == [DisconnectRequested(namespace="/chat")]
    assert client.connected_namespaces() == ("/",)
    assert client.disconnect("/") == Disconnect()
    assert client.connected_namespaces() == ()


# --------------------------------------------------------------------------- both, over the wire


class Wire:
    """A client and a server connection joined through a parser's frames."""

    def __init__(self, parser: Parser) -> None:
        self.parser = parser
        self.client = SioClientConnection()
        self.server = SioServerConnection()
        self._to_server = parser.decoder()
        self._to_client = parser.decoder()

    def client_sends(self, packet: SioPacket) -> list[SioEvent]:
        return self._deliver(packet, self._to_server, self.server.receive)

    def server_sends(self, packet: SioPacket) -> list[SioEvent]:
        return self._deliver(packet, self._to_client, self.client.receive)

    def _deliver(
        self,
        packet: SioPacket,
        decoder: Decoder,
        receive: Callable[[SioPacket], list[SioEvent]],
    ) -> list[SioEvent]:
        events: list[SioEvent] = []
        for frame in self.parser.encode(packet):
            decoded = decoder.receive(frame)
            if decoded is not None:
                events.extend(receive(decoded))
        return events


@pytest.mark.parametrize("parser", [JSON_PARSER, MSGPACK_PARSER], ids=["json", "msgpack"])
def test_client_and_server_through_the_wire(parser: Parser) -> None:
    wire = Wire(parser)
    assert wire.client_sends(wire.client.connect("/chat", {"token": "t"})) == [
        ConnectRequested(namespace="/chat", auth={"token": "t"})
    ]
    assert wire.server_sends(wire.server.accept("/chat", "sid-1")) == [
        ConnectAccepted(namespace="/chat", sid="sid-1")
    ]
    ack_id = wire.client.new_ack_id("/chat")
    emitted = Event(
        name="upload", args=(b"\x00\x01", {"meta": [b"x"]}), namespace="/chat", ack_id=ack_id
    )
    assert wire.client_sends(emitted) == [
        EventReceived(namespace="/chat", name="upload", args=emitted.args, ack_id=ack_id)
    ]
    assert wire.server_sends(Ack(ack_id=ack_id, args=("stored", b"\xff"), namespace="/chat")) == [
        AckReceived(namespace="/chat", ack_id=ack_id, args=("stored", b"\xff"))
    ]
    server_ack = wire.server.new_ack_id("/chat")
    assert wire.server_sends(Event(name="ping", namespace="/chat", ack_id=server_ack)) == [
        EventReceived(namespace="/chat", name="ping", args=(), ack_id=server_ack)
    ]
    assert wire.client_sends(Ack(ack_id=server_ack, namespace="/chat")) == [
        AckReceived(namespace="/chat", ack_id=server_ack, args=())
    ]
    # A refused namespace, then a server-side disconnect.
    wire.client_sends(wire.client.connect("/admin"))
    assert wire.server_sends(wire.server.refuse("/admin", {"message": "no"})) == [
        ConnectRefused(namespace="/admin", data={"message": "no"})
    ]
    assert wire.server_sends(wire.server.disconnect("/chat")) == [
        DisconnectRequested(namespace="/chat")
    ]
    assert wire.client.connected_namespaces() == wire.server.connected_namespaces() == ()


# --------------------------------------------------------------------------- properties

namespaces = st.sampled_from(["/", "/a"])
incoming = st.one_of(
    st.builds(Connect, namespace=namespaces, data=st.none() | st.just({"sid": "s"})),
    st.builds(Disconnect, namespace=namespaces),
    st.builds(Event, name=st.just("e"), namespace=namespaces, ack_id=st.none() | st.integers(0, 2)),
    st.builds(Ack, ack_id=st.integers(0, 2), namespace=namespaces),
    st.builds(ConnectError, namespace=namespaces, data=st.just("no")),
)
local_ops = st.tuples(
    st.sampled_from(["accept", "refuse", "disconnect", "new_ack_id", "cancel_ack", "connect"]),
    namespaces,
)


def _check_consistent(conn: SioServerConnection | SioClientConnection) -> None:
    connected = conn.connected_namespaces()
    for namespace in ("/", "/a"):
        assert (namespace in connected) == (conn.state(namespace) is S.CONNECTED)


@settings(max_examples=250, deadline=None)
@given(steps=st.lists(st.one_of(incoming, local_ops), max_size=25))
def test_random_traffic_raises_only_protocol_errors(steps: list[object]) -> None:
    server, client = SioServerConnection(), SioClientConnection()
    for step in steps:
        for conn in (server, client):
            try:
                if isinstance(step, tuple):
                    op, namespace = step
                    if op == "cancel_ack":
                        conn.cancel_ack(namespace, 0)
                    elif op == "connect" and isinstance(conn, SioClientConnection):
                        conn.connect(namespace)
                    elif op in ("accept", "refuse") and isinstance(conn, SioServerConnection):
                        if op == "accept":
                            conn.accept(namespace, "s")
                        else:
                            conn.refuse(namespace, None)
                    elif op in ("disconnect", "new_ack_id"):
                        getattr(conn, op)(namespace)
                else:
                    assert isinstance(step, Connect | Disconnect | Event | Ack | ConnectError)
                    for event in conn.receive(step):
                        assert event.namespace == step.namespace
            except ProtocolError:
                pass
            _check_consistent(conn)


def test_expect_ack_registers_a_caller_allocated_id() -> None:
    from roomcast.protocol import Ack, AckReceived, Connect, LocalProtocolError, SioServerConnection

    server = SioServerConnection()
    server.receive(Connect(namespace="/"))
    server.accept("/", "sid-1")
    server.expect_ack("/", 41)
    assert server.receive(Ack(ack_id=40, args=(), namespace="/")) == []
    assert server.receive(Ack(ack_id=41, args=("x",), namespace="/")) == [
        AckReceived(namespace="/", ack_id=41, args=("x",))
    ]
    assert server.receive(Ack(ack_id=41, args=(), namespace="/")) == []  # answered once
    with pytest.raises(LocalProtocolError):
        server.expect_ack("/", -1)
    with pytest.raises(LocalProtocolError):
        server.expect_ack("/other", 1)
