"""Engine.IO v4 session machines: heartbeat, upgrade, close; server and client driven together."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol._eio import (
    _TRANSITIONS,
    Closed,
    EioClientSession,
    EioEvent,
    EioPacket,
    EioPacketType,
    EioServerSession,
    EioState,
    MessageReceived,
    SendPacket,
    SessionParams,
    Upgraded,
    UpgradeStarted,
    _transition,
    _Trigger,
    decode_handshake,
    decode_payload,
    decode_ws_frame,
    encode_payload,
    encode_ws_frame,
)
from roomcast.protocol._errors import LocalProtocolError

T = EioPacketType
PING = EioPacket(type=T.PING)
PONG = EioPacket(type=T.PONG)
CLOSE = EioPacket(type=T.CLOSE)
PROBE_PING = EioPacket(type=T.PING, data="probe")
PROBE_PONG = EioPacket(type=T.PONG, data="probe")
UPGRADE = EioPacket(type=T.UPGRADE)
NOOP = EioPacket(type=T.NOOP)


def msg(data: str | bytes) -> EioPacket:
    return EioPacket(type=T.MESSAGE, data=data)


def server(
    transport: str = "polling", now: float = 0.0, upgrades: tuple[str, ...] = ("websocket",)
) -> EioServerSession:
    """A session with the conformance settings (docs/conformance.md §1)."""
    return EioServerSession(
        sid="sid1",
        transport=transport,
        ping_interval=0.3,
        ping_timeout=0.2,
        max_payload=1_000_000,
        now=now,
        upgrades=upgrades,
    )


def assert_dead(session: EioServerSession | EioClientSession, now: float) -> None:
    """A closed session stays closed and says nothing more."""
    assert session.state is EioState.CLOSED
    assert session.next_deadline() == math.inf
    assert session.tick(now + 1000) == []
    for packet in (msg("x"), msg(b"x"), PING, PONG, CLOSE, NOOP, UPGRADE):
        assert session.receive(packet, now) == []
    if isinstance(session, EioServerSession):
        assert session.receive_probe(PROBE_PING, now) == []
    assert session.close() == []


# --------------------------------------------------------------------------- server: handshake


def test_polling_handshake_offers_websocket() -> None:
    packet = server().handshake()
    assert packet.type is T.OPEN
    assert packet.data == (
        '{"sid":"sid1","upgrades":["websocket"],"pingInterval":300,'
        '"pingTimeout":200,"maxPayload":1000000}'
    )


def test_websocket_handshake_offers_no_upgrades() -> None:
    assert json.loads(server("websocket").handshake().data)["upgrades"] == []


def test_handshake_reflects_configured_upgrades() -> None:
    assert json.loads(server(upgrades=()).handshake().data)["upgrades"] == []


def test_server_attributes() -> None:
    s = server("websocket")
    assert (s.sid, s.transport, s.state) == ("sid1", "websocket", EioState.OPEN)


def test_unknown_transport_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        server("webtransport")


# --------------------------------------------------------------------------- server: heartbeat


@pytest.mark.parametrize("t0", [0.0, 12_345.678])
def test_first_ping_is_due_one_interval_after_the_handshake(t0: float) -> None:
    s = server(now=t0)
    assert s.next_deadline() == t0 + 0.3
    assert s.tick(t0) == []
    assert s.tick(t0 + 0.29) == []
    assert s.tick(s.next_deadline()) == [SendPacket(packet=PING)]


def test_conformance_timeout_closes_exactly_500ms_after_the_handshake() -> None:
    # docs/conformance.md §2.4: the check sleeps 500 ms after the handshake and expects
    # the session gone.
    s = server(now=0.0)
    assert s.tick(0.3) == [SendPacket(packet=PING)]
    assert s.next_deadline() == 0.5
    assert s.tick(0.49) == []
    assert s.tick(0.5) == [Closed(reason="ping timeout")]
    assert_dead(s, 0.5)


def test_no_second_ping_while_one_is_outstanding() -> None:
    s = server()
    assert s.tick(0.3) == [SendPacket(packet=PING)]
    assert s.tick(0.3) == []
    assert s.tick(0.45) == []


def test_pong_schedules_the_next_ping_one_interval_later() -> None:
    s = server()
    s.tick(0.3)
    assert s.receive(PONG, 0.35) == []
    assert s.next_deadline() == pytest.approx(0.65)
    assert s.tick(0.6) == []
    assert s.tick(0.5) == []  # the old pong deadline is gone
    assert s.tick(0.65) == [SendPacket(packet=PING)]
    assert s.next_deadline() == pytest.approx(0.85)


def test_a_late_tick_does_not_move_the_pong_deadline() -> None:
    # docs/conformance.md §2.4: the deadline is measured from when the PING was due (the
    # handshake + ping_interval), with no slack: a tick that runs late (a busy loop)
    # must not give the client more time.
    s = server()
    assert s.tick(0.4) == [SendPacket(packet=PING)]
    assert s.next_deadline() == pytest.approx(0.5)
    assert s.tick(0.49) == []
    assert s.tick(0.5) == [Closed(reason="ping timeout")]


def test_unsolicited_pong_postpones_the_ping_as_in_node() -> None:
    s = server()
    assert s.receive(PONG, 0.2) == []
    assert s.next_deadline() == pytest.approx(0.5)


def test_heartbeat_keeps_a_responsive_client_forever() -> None:
    s = server()
    now = 0.0
    for _ in range(1000):
        now = s.next_deadline()
        assert s.tick(now) == [SendPacket(packet=PING)]
        now += 0.1
        assert s.receive(PONG, now) == []
    assert s.state is EioState.OPEN
    assert s.next_deadline() == pytest.approx(now + 0.3)


# --------------------------------------------------------------------------- server: packets


def test_messages_are_delivered() -> None:
    s = server()
    assert s.receive(msg("hello"), 0.1) == [MessageReceived(data="hello")]
    assert s.receive(msg(b"\x01"), 0.1) == [MessageReceived(data=b"\x01")]
    assert s.receive(msg(""), 0.1) == [MessageReceived(data="")]


def test_messages_do_not_touch_the_heartbeat() -> None:
    s = server()
    s.tick(0.3)
    s.receive(msg("x"), 0.4)
    assert s.tick(0.5) == [Closed(reason="ping timeout")]


def test_noop_from_the_client_is_ignored() -> None:
    s = server()
    assert s.receive(NOOP, 0.1) == []
    assert s.state is EioState.OPEN
    assert s.next_deadline() == 0.3


def test_peer_close_is_transport_close() -> None:
    s = server()
    assert s.receive(CLOSE, 0.1) == [Closed(reason="transport close")]
    assert_dead(s, 0.1)


@pytest.mark.parametrize("packet", [PING, PROBE_PING])
def test_ping_from_a_v4_client_is_a_transport_error_as_in_node(packet: EioPacket) -> None:
    # Node engine.io: onError(new Error("invalid heartbeat direction")) -> "transport error".
    s = server()
    assert s.receive(packet, 0.1) == [Closed(reason="transport error")]
    assert_dead(s, 0.1)


@pytest.mark.parametrize("packet", [EioPacket(type=T.OPEN), UPGRADE])
def test_packets_a_client_never_sends_on_the_active_transport(packet: EioPacket) -> None:
    s = server()
    assert s.receive(packet, 0.1) == [Closed(reason="parse error")]
    assert_dead(s, 0.1)


def test_local_close_sends_close() -> None:
    s = server()
    assert s.close() == [SendPacket(packet=CLOSE), Closed(reason="forced close")]
    assert_dead(s, 0.0)


def test_local_close_with_a_reason() -> None:
    s = server()
    assert s.close("server shutting down") == [
        SendPacket(packet=CLOSE),
        Closed(reason="server shutting down"),
    ]


def test_close_while_a_ping_is_outstanding_clears_the_deadline() -> None:
    s = server()
    s.tick(0.3)
    s.close()
    assert_dead(s, 0.6)


# --------------------------------------------------------------------------- server: upgrade


def test_upgrade_polling_to_websocket() -> None:
    # docs/conformance.md §2.5.
    s = server()
    assert s.receive_probe(PROBE_PING, 0.05) == [
        SendPacket(packet=PROBE_PONG, probe=True),
        UpgradeStarted(),
    ]
    assert (s.state, s.transport) == (EioState.UPGRADING, "polling")
    # polling keeps working while upgrading
    assert s.receive(msg("via polling"), 0.06) == [MessageReceived(data="via polling")]
    assert s.receive_probe(UPGRADE, 0.07) == [Upgraded()]
    assert (s.state, s.transport) == (EioState.OPEN, "websocket")
    assert s.receive(msg("hello"), 0.08) == [MessageReceived(data="hello")]


def test_heartbeat_runs_through_an_upgrade() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    assert s.tick(0.3) == [SendPacket(packet=PING)]
    s.receive_probe(UPGRADE, 0.35)
    assert s.receive(PONG, 0.4) == []
    assert s.next_deadline() == pytest.approx(0.7)


def test_timeout_while_upgrading() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    s.tick(0.3)
    assert s.tick(0.5) == [Closed(reason="ping timeout")]
    assert_dead(s, 0.5)


def test_peer_close_while_upgrading() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    assert s.receive(CLOSE, 0.2) == [Closed(reason="transport close")]
    assert_dead(s, 0.2)


def test_local_close_while_upgrading() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    assert s.close() == [SendPacket(packet=CLOSE), Closed(reason="forced close")]
    assert_dead(s, 0.2)


@pytest.mark.parametrize(
    "first",
    [PING, EioPacket(type=T.PING, data="probe2"), PROBE_PONG, msg("4hello"), msg(b"\x01"), CLOSE],
)
def test_anything_but_a_probe_on_the_probe_is_a_parse_error(first: EioPacket) -> None:
    s = server()
    assert s.receive_probe(first, 0.1) == [Closed(reason="parse error")]
    assert_dead(s, 0.1)


def test_upgrade_before_the_probe_is_a_parse_error() -> None:
    s = server()
    assert s.receive_probe(UPGRADE, 0.1) == [Closed(reason="parse error")]
    assert_dead(s, 0.1)


def test_a_second_probe_is_a_parse_error() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    assert s.receive_probe(PROBE_PING, 0.1) == [Closed(reason="parse error")]
    assert_dead(s, 0.1)


def test_non_upgrade_packet_on_the_probe_after_probing_is_a_parse_error() -> None:
    s = server()
    s.receive_probe(PROBE_PING, 0.1)
    assert s.receive_probe(msg("x"), 0.1) == [Closed(reason="parse error")]


def _upgraded() -> EioServerSession:
    s = server()
    s.receive_probe(PROBE_PING, 0.0)
    s.receive_probe(UPGRADE, 0.0)
    return s


@pytest.mark.parametrize(
    "make",
    [lambda: server("websocket"), lambda: server(upgrades=()), _upgraded],
    ids=["websocket-session", "no-upgrades", "already-upgraded"],
)
def test_probing_a_session_that_cannot_upgrade_is_our_bug(
    make: Callable[[], EioServerSession],
) -> None:
    # The engine must refuse such a WebSocket (docs/conformance.md §2.5, point 6: accept,
    # then close it).
    s = make()
    with pytest.raises(LocalProtocolError):
        s.receive_probe(PROBE_PING, 0.1)
    assert s.state is EioState.OPEN


# --------------------------------------------------------------------------- the table


def test_transition_table_closes_from_every_live_state_and_is_absorbing() -> None:
    for state in (EioState.OPEN, EioState.UPGRADING):
        assert _TRANSITIONS[state, _Trigger.CLOSE] is EioState.CLOSED
    assert not any(state is EioState.CLOSED for state, _ in _TRANSITIONS)


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (EioState.CLOSED, _Trigger.CLOSE),
        (EioState.OPEN, _Trigger.UPGRADE),
        (EioState.UPGRADING, _Trigger.PROBE),
    ],
)
def test_illegal_transitions_we_ask_for_raise_local_errors(
    state: EioState, trigger: _Trigger
) -> None:
    with pytest.raises(LocalProtocolError):
        _transition(state, trigger)


# --------------------------------------------------------------------------- client


HANDSHAKE = SessionParams(
    sid="sid1", upgrades=(), ping_interval=0.3, ping_timeout=0.2, max_payload=1_000_000
)


def opened_client(now: float = 0.0) -> EioClientSession:
    c = EioClientSession(now=now)
    assert c.receive(server("websocket", now).handshake(), now) == []
    return c


def test_client_before_the_handshake() -> None:
    c = EioClientSession(now=0.0)
    assert c.handshake is None
    assert c.state is EioState.OPEN
    assert c.next_deadline() == math.inf
    assert c.tick(100.0) == []  # the caller owns the handshake timeout


def test_client_stores_the_handshake() -> None:
    c = EioClientSession(now=0.0)
    assert c.receive(server("websocket").handshake(), 0.01) == []
    assert c.handshake == HANDSHAKE
    assert c.next_deadline() == pytest.approx(0.51)


@pytest.mark.parametrize("first", [msg("x"), PING, CLOSE, NOOP, EioPacket(type=T.OPEN, data="{}")])
def test_client_first_packet_must_be_a_good_open(first: EioPacket) -> None:
    c = EioClientSession(now=0.0)
    assert c.receive(first, 0.0) == [Closed(reason="parse error")]
    assert c.handshake is None
    assert_dead(c, 0.0)


def test_client_answers_pings_and_rearms_its_deadline() -> None:
    c = opened_client()
    assert c.tick(0.49) == []
    assert c.receive(PING, 0.3) == [SendPacket(packet=PONG)]
    assert c.next_deadline() == pytest.approx(0.8)
    assert c.tick(0.6) == []
    assert c.tick(c.next_deadline()) == [Closed(reason="ping timeout")]
    assert_dead(c, 0.8)


def test_client_times_out_without_any_ping() -> None:
    c = opened_client(now=10.0)
    assert c.tick(10.49) == []
    assert c.tick(c.next_deadline()) == [Closed(reason="ping timeout")]


def test_client_messages_and_noop() -> None:
    c = opened_client()
    assert c.receive(msg("hi"), 0.1) == [MessageReceived(data="hi")]
    assert c.receive(msg(b"\x00"), 0.1) == [MessageReceived(data=b"\x00")]
    assert c.receive(NOOP, 0.1) == []
    assert c.next_deadline() == pytest.approx(0.5)  # only a PING proves the server alive


def test_client_peer_close() -> None:
    c = opened_client()
    assert c.receive(CLOSE, 0.1) == [Closed(reason="transport close")]
    assert_dead(c, 0.1)


@pytest.mark.parametrize("packet", [PONG, PROBE_PONG, UPGRADE, EioPacket(type=T.OPEN)])
def test_client_rejects_packets_a_v4_server_never_sends(packet: EioPacket) -> None:
    c = opened_client()
    assert c.receive(packet, 0.1) == [Closed(reason="parse error")]
    assert_dead(c, 0.1)


@pytest.mark.parametrize("handshaken", [True, False])
def test_client_local_close(handshaken: bool) -> None:
    c = opened_client() if handshaken else EioClientSession(now=0.0)
    assert c.close() == [SendPacket(packet=CLOSE), Closed(reason="forced close")]
    assert_dead(c, 0.0)


# --------------------------------------------------------------------------- the pair


@attrs.define
class ConnectionPair:
    """A server and a client session wired together through the real codecs (h11 style).

    Packets a session asks to send are encoded the way the transport would (one WebSocket
    frame each, or one polling body per batch) and decoded on the other side.
    """

    server: EioServerSession
    client: EioClientSession
    transport: str
    server_closed: list[str] = attrs.Factory(list)
    client_closed: list[str] = attrs.Factory(list)
    client_got: list[str | bytes] = attrs.Factory(list)
    server_got: list[str | bytes] = attrs.Factory(list)

    @classmethod
    def open(cls, transport: str, now: float = 0.0) -> ConnectionPair:
        s = server(transport, now)
        pair = cls(server=s, client=EioClientSession(now=now), transport=transport)
        pair.to_client([s.handshake()], now)
        return pair

    def _wire(self, packets: list[EioPacket]) -> list[EioPacket]:
        if self.transport == "websocket":
            return [decode_ws_frame(encode_ws_frame(p)) for p in packets]
        return list(decode_payload(encode_payload(packets).encode("utf-8")))

    def to_client(self, packets: list[EioPacket], now: float) -> None:
        for packet in self._wire(packets):
            self.on_client_events(self.client.receive(packet, now), now)

    def to_server(self, packets: list[EioPacket], now: float) -> None:
        for packet in self._wire(packets):
            self.on_server_events(self.server.receive(packet, now), now)

    def on_server_events(self, events: list[EioEvent], now: float) -> None:
        outgoing = []
        for event in events:
            match event:
                case SendPacket(packet=packet, probe=False):
                    outgoing.append(packet)
                case MessageReceived(data=data):
                    self.server_got.append(data)
                case Closed(reason=reason):
                    self.server_closed.append(reason)
                case _:  # pragma: no cover - no upgrades in a pair
                    raise AssertionError(event)
        if outgoing:
            self.to_client(outgoing, now)

    def on_client_events(self, events: list[EioEvent], now: float) -> None:
        outgoing = []
        for event in events:
            match event:
                case SendPacket(packet=packet, probe=False):
                    outgoing.append(packet)
                case MessageReceived(data=data):
                    self.client_got.append(data)
                case Closed(reason=reason):
                    self.client_closed.append(reason)
                case _:  # pragma: no cover - a client emits nothing else
                    raise AssertionError(event)
        if outgoing:
            self.to_server(outgoing, now)

    def run_until(self, end: float) -> None:
        """Advance time deadline by deadline up to ``end``, ticking both sides."""
        while (now := min(self.server.next_deadline(), self.client.next_deadline())) <= end:
            self.on_server_events(self.server.tick(now), now)
            self.on_client_events(self.client.tick(now), now)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_pair_handshake_and_messages(transport: str) -> None:
    pair = ConnectionPair.open(transport)
    assert pair.client.handshake is not None
    assert pair.client.handshake.upgrades == (() if transport == "websocket" else ("websocket",))
    pair.to_server([msg("hello"), msg(b"\x01\x02\x03\x04")], 0.1)
    assert pair.server_got == ["hello", b"\x01\x02\x03\x04"]
    pair.to_client([msg("back"), msg(b"")], 0.1)
    assert pair.client_got == ["back", b""]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_pair_heartbeat_keeps_the_session_alive(transport: str) -> None:
    pair = ConnectionPair.open(transport)
    pair.run_until(300.0)
    assert pair.server.state is pair.client.state is EioState.OPEN
    assert pair.server_closed == pair.client_closed == []


def test_pair_client_notices_a_server_that_stopped_pinging() -> None:
    pair = ConnectionPair.open("websocket")
    pair.run_until(10.0)
    # The server stalls: only the client is ticked from now on.
    assert pair.client.tick(pair.client.next_deadline()) == [Closed(reason="ping timeout")]


def test_pair_server_closes_a_silent_client() -> None:
    pair = ConnectionPair.open("websocket")
    # The client never answers: the server pings at 0.3 and gives up at 0.5.
    assert pair.server.tick(0.3) == [SendPacket(packet=PING)]
    assert pair.server.tick(0.5) == [Closed(reason="ping timeout")]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_pair_server_close_reaches_the_client(transport: str) -> None:
    pair = ConnectionPair.open(transport)
    pair.on_server_events(pair.server.close(), 0.1)
    assert pair.server_closed == ["forced close"]
    assert pair.client_closed == ["transport close"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_pair_client_close_reaches_the_server(transport: str) -> None:
    pair = ConnectionPair.open(transport)
    pair.on_client_events(pair.client.close(), 0.1)
    assert pair.client_closed == ["forced close"]
    assert pair.server_closed == ["transport close"]


def test_pair_upgrade_through_the_wire() -> None:
    """docs/conformance.md §2.5 end to end: polling handshake, probe and upgrade over frames."""
    s = server("polling")
    handshake = decode_handshake(decode_payload(encode_payload([s.handshake()]))[0])
    assert handshake.upgrades == ("websocket",)
    probe_events = s.receive_probe(decode_ws_frame("2probe"), 0.1)
    assert [encode_ws_frame(e.packet) for e in probe_events if isinstance(e, SendPacket)] == [
        "3probe"
    ]
    assert UpgradeStarted() in probe_events
    # §2.5.3: the engine answers polling GETs with exactly "6".
    assert encode_payload([NOOP]) == "6"
    assert s.receive_probe(decode_ws_frame("5"), 0.2) == [Upgraded()]
    assert s.receive(decode_ws_frame("4hello"), 0.25) == [MessageReceived(data="hello")]
    assert s.transport == "websocket"


# --------------------------------------------------------------------------- hypothesis

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["tick", "receive", "probe", "close"]),
        st.sampled_from([PING, PONG, CLOSE, NOOP, UPGRADE, PROBE_PING, PROBE_PONG, msg("x")]),
        st.floats(min_value=0.0, max_value=0.4),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_server_invariants_under_any_sequence(actions: list[tuple[str, EioPacket, float]]) -> None:
    s = server()
    now = 0.0
    closes = 0
    ping_outstanding = False
    for action, packet, step in actions:
        now += step
        if action == "tick":
            events = s.tick(now)
        elif action == "receive":
            events = s.receive(packet, now)
        elif action == "close":
            events = s.close()
        else:
            try:
                events = s.receive_probe(packet, now)
            except LocalProtocolError:
                assert s.transport == "websocket"
                continue
        if s.state is not EioState.CLOSED:
            assert s.next_deadline() < math.inf
        for event in events:
            assert closes == 0, "nothing after Closed"
            if isinstance(event, Closed):
                closes += 1
            elif event == SendPacket(packet=PING):
                assert not ping_outstanding, "a second PING while one is outstanding"
                ping_outstanding = True
        if (action == "receive" and packet.type is T.PONG) or s.state is EioState.CLOSED:
            ping_outstanding = False
        assert (closes == 1) == (s.state is EioState.CLOSED)
