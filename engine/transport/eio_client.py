"""The client's Engine.IO transports: HTTP long-polling, WebSocket, and the upgrade.

``open_engine_transport`` opens one Engine.IO connection the way socket.io-client's
``engine.io-client`` does:

* with ``transports=("polling", "websocket")`` (its default) the handshake is a polling
  ``GET``; once the server's OPEN arrives, ``EngineTransport.upgrade`` opens a WebSocket
  with the session's ``sid``, sends ``2probe``, waits for ``3probe``, pauses polling (the
  GET in flight ends, the server answers it with NOOP once probed; a POST in flight
  finishes) and sends ``5`` (UPGRADE) on the WebSocket, which carries everything after;
* with ``("websocket",)`` the first request is the WebSocket, and there is no upgrade;
* with ``("polling",)`` it stays on polling.

Packets go in and out as ``EioPacket`` records: framing is done by
``roomcast.protocol``'s encoders (``encode_payload``/``decode_payload`` for polling
bodies, ``encode_ws_frame``/``decode_ws_frame`` for WebSocket messages).

Polling runs over two persistent HTTP/1.1 connections (h11): one for the long-poll GETs
(the reader's), one for the POSTs (the writer's), so that a write never waits behind a
held GET, as a browser's two sockets behave.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias
from urllib.parse import urlencode

import attrs
import h11
import trio

from roomcast.engine.errors import ConnectionFailedError, TransportClosed
from roomcast.engine.transport.ws_client import (
    StreamFactory,
    WebSocketClient,
    connect_websocket,
    describe_failure,
)
from roomcast.protocol import (
    DisconnectReason,
    EioPacket,
    EioPacketType,
    Limits,
    RemoteProtocolError,
    decode_handshake,
    decode_payload,
    decode_ws_frame,
    encode_payload,
    encode_ws_frame,
)

__all__ = ["EngineTransport", "EngineUrl", "TransportName", "open_engine_transport"]

logger = logging.getLogger(__name__)

TransportName: TypeAlias = Literal["polling", "websocket"]
_RECEIVE_BYTES: Final = 65_536
_PROBE: Final = "probe"
_UPGRADE: Final = EioPacket(type=EioPacketType.UPGRADE)
_DEFAULT_PORTS: Final = {False: 80, True: 443}


@attrs.frozen(kw_only=True)
class EngineUrl:
    """Where a server's Engine.IO endpoint is.

    Attributes:
        tls: ``https``/``wss`` (True) or ``http``/``ws``.
        host: The host name or address.
        port: The TCP port.
        path: The Engine.IO path (``/socket.io/``).
        query: The user's own query parameters, passed on with every request.
    """

    tls: bool
    host: str
    port: int
    path: str
    query: str = ""

    @property
    def host_header(self) -> str:
        return self.host if self.port == _DEFAULT_PORTS[self.tls] else f"{self.host}:{self.port}"

    def target(self, transport: TransportName, sid: str | None = None) -> str:
        """The request target (path and query) for ``transport``, within session ``sid``."""
        params = {"EIO": "4", "transport": transport}
        if sid is not None:
            params["sid"] = sid
        query = urlencode(params)
        if self.query:
            query = f"{self.query}&{query}"
        return f"{self.path}?{query}"

    def websocket_url(self, sid: str | None = None) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host_header}{self.target('websocket', sid)}"


@attrs.frozen(kw_only=True)
class _Dial:
    """How to open byte streams to the server (TCP, TLS, or the caller's factory)."""

    url: EngineUrl
    headers: tuple[tuple[str, str], ...]
    limits: Limits
    ssl_context: ssl.SSLContext | None
    stream_factory: StreamFactory | None

    async def open_stream(self) -> trio.abc.Stream:
        url = self.url
        try:
            if self.stream_factory is not None:
                return await self.stream_factory(url.host, url.port)
            if url.tls:
                return await trio.open_ssl_over_tcp_stream(
                    url.host,
                    url.port,
                    ssl_context=self.ssl_context or ssl.create_default_context(),
                    https_compatible=True,
                )
            return await trio.open_tcp_stream(url.host, url.port)
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectionFailedError(f"cannot connect to {url.host}:{url.port}: {exc}") from exc

    async def websocket(self, sid: str | None) -> WebSocketClient:
        url = self.url
        return await connect_websocket(
            url.websocket_url(sid),
            headers=self.headers,
            max_message_bytes=self.limits.max_payload_bytes,
            ssl_context=self.ssl_context,
            stream_factory=self.stream_factory,
        )


@attrs.define(eq=False)
class _HttpChannel:
    """One persistent HTTP/1.1 connection that runs one request at a time (h11)."""

    _dial: _Dial
    _stream: trio.abc.Stream | None = None
    _h11: h11.Connection | None = None
    _answered: bool = False
    """Whether any byte of the current request's answer arrived."""
    _shut: bool = False

    async def request(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        """Send one request and return the response's status and whole body.

        A kept-alive connection the server closed while it was idle (its keep-alive
        timeout) fails before any answer: the request is then sent once more, on a new
        connection, as browsers do. Nothing reached the server's application the first
        time, so a POST is not delivered twice.

        Cancellation: the connection is closed; the next request opens another.

        Raises:
            ConnectionFailedError: No connection could be opened.
            TransportClosed: The connection broke, or the body exceeds
                ``limits.max_payload_bytes`` (``"transport error"``).
        """
        if self._shut:
            await trio.lowlevel.checkpoint()
            raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE)
        reused = self._h11 is not None and self._h11.our_state is h11.IDLE
        try:
            return await self._exchange(method, target, body)
        except TransportClosed:
            if not reused or self._answered or self._shut:
                raise
            logger.debug("kept-alive connection was closed: %s again on a new one", method)
            return await self._exchange(method, target, body)

    async def _exchange(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self._h11
        if self._stream is None or conn is None or conn.our_state is not h11.IDLE:
            await self._drop()
            try:
                self._stream = await self._dial.open_stream()
            except ConnectionFailedError as exc:
                raise TransportClosed(DisconnectReason.TRANSPORT_ERROR) from exc
            conn = self._h11 = h11.Connection(h11.CLIENT)
        stream = self._stream
        headers = [("Host", self._dial.url.host_header), *self._dial.headers]
        if body is not None:
            headers += [
                ("Content-Type", "text/plain; charset=UTF-8"),
                ("Content-Length", str(len(body))),
            ]
        self._answered = False
        ok = False
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            status, response = await self._read_response(conn, stream)
            ok = True
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            h11.ProtocolError,
        ) as exc:
            logger.debug("HTTP %s failed: %r", method, exc)
            raise TransportClosed(DisconnectReason.TRANSPORT_ERROR) from exc
        finally:
            if not ok:
                broken = self._forget()
                if broken is not None:
                    await trio.aclose_forcefully(broken)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive; otherwise the next request reconnects
        return status, response

    async def _read_response(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[int, bytes]:
        limit = self._dial.limits.max_payload_bytes
        status = 0
        parts: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(_RECEIVE_BYTES))
                self._answered = self._answered or bool(data)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise TransportClosed(DisconnectReason.TRANSPORT_ERROR)
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportClosed(DisconnectReason.TRANSPORT_CLOSE)

    async def aclose(self) -> None:
        """Close the connection for good: requests from now on fail.

        Cancellation: the stream is closed forcefully.
        """
        self._shut = True
        await self._drop()

    def _forget(self) -> trio.abc.Stream | None:
        """Forget the current connection; return its stream for the caller to close."""
        stream = self._stream
        self._stream = None
        self._h11 = None
        return stream

    async def _drop(self) -> None:
        stream = self._forget()
        if stream is not None:
            await trio.aclose_forcefully(stream)


@attrs.define(eq=False)
class _Polling:
    """The HTTP long-polling transport of one session (Engine.IO v4, "HTTP long-polling")."""

    _dial: _Dial
    sid: str | None = None
    _get: _HttpChannel = attrs.field(init=False)
    _post: _HttpChannel = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._get = _HttpChannel(self._dial)
        self._post = _HttpChannel(self._dial)

    async def poll(self) -> tuple[EioPacket, ...]:
        """One GET: the packets the server had (or got within its poll), in order."""
        target = self._dial.url.target("polling", self.sid)
        status, body = await self._get.request("GET", target, None)
        if status != 200:
            # 400 "Session ID unknown": the server forgot the session (it restarted).
            logger.debug("polling GET answered %d: %r", status, body[:200])
            raise TransportClosed(DisconnectReason.TRANSPORT_ERROR)
        try:
            return decode_payload(body, self._dial.limits)
        except RemoteProtocolError as exc:
            logger.debug("bad polling payload: %s", exc)
            raise TransportClosed(DisconnectReason.PARSE_ERROR) from exc

    async def post(self, packets: Sequence[EioPacket]) -> None:
        """One POST with ``packets`` as one payload."""
        body = encode_payload(packets).encode()
        status, answer = await self._post.request(
            "POST", self._dial.url.target("polling", self.sid), body
        )
        if status != 200:
            logger.debug("polling POST answered %d: %r", status, answer[:200])
            raise TransportClosed(DisconnectReason.TRANSPORT_ERROR)

    async def aclose(self) -> None:
        await self._get.aclose()
        await self._post.aclose()


async def _websocket_packets(ws: WebSocketClient, limits: Limits) -> tuple[EioPacket, ...]:
    frame = await ws.receive_message()
    try:
        return (decode_ws_frame(frame, limits),)
    except RemoteProtocolError as exc:
        raise TransportClosed(DisconnectReason.PARSE_ERROR) from exc


@attrs.define(eq=False)
class EngineTransport:
    """One Engine.IO connection: polling (maybe upgraded) or a WebSocket.

    One reader task calls ``receive``, one writer task calls ``send``; ``upgrade`` runs
    in a task of its own once the handshake is known.
    """

    _dial: _Dial
    _polling: _Polling | None
    _ws: WebSocketClient | None
    _pending: list[EioPacket] = attrs.Factory(list)
    _probed: WebSocketClient | None = None
    _send_lock: trio.Lock = attrs.Factory(trio.Lock)
    upgraded: trio.Event = attrs.Factory(trio.Event)
    """Set once the WebSocket carries the session (after a polling start)."""

    @property
    def name(self) -> TransportName:
        """The transport carrying the session now."""
        return "websocket" if self._ws is not None else "polling"

    @property
    def probed(self) -> bool:
        """Whether a WebSocket answered the probe (the switch to it is then under way)."""
        return self._probed is not None or self.upgraded.is_set()

    @property
    def control(self) -> bool:
        """Whether WebSocket control frames (pong, close answer) wait for the writer."""
        return self._ws is not None and bool(self._ws.control)

    async def receive(self) -> tuple[EioPacket, ...]:
        """The next packets from the server (one GET's payload, or one message).

        Cancellation: safe on a WebSocket; on polling the GET's connection is closed, and
        what it would have returned stays with the server for the next GET.

        Raises:
            TransportClosed: The transport ended or the server broke the framing.
        """
        if self._pending:
            packets = tuple(self._pending)
            self._pending.clear()
            return packets
        if self._probed is not None:
            await self._switch(self._probed)
        if self._ws is not None:
            return await _websocket_packets(self._ws, self._dial.limits)
        assert self._polling is not None
        return await self._polling.poll()

    async def _switch(self, ws: WebSocketClient) -> None:
        # Polling is paused: the reader is here, so no GET is in flight; the lock waits
        # for a POST in flight. Then UPGRADE, and the WebSocket carries everything.
        async with self._send_lock:
            self._probed = None
            await ws.send([encode_ws_frame(_UPGRADE)])
            self._ws = ws
        if self._polling is not None:
            await self._polling.aclose()
        self.upgraded.set()
        logger.debug("upgraded to websocket")

    async def send(self, packets: Sequence[EioPacket]) -> None:
        """Send ``packets`` (and queued WebSocket control frames) in one write.

        Cancellation: part of them may have been sent; the transport must be closed.

        Raises:
            TransportClosed: The transport ended.
        """
        async with self._send_lock:
            if self._ws is not None:
                await self._ws.send([encode_ws_frame(packet) for packet in packets])
            elif packets:
                assert self._polling is not None
                await self._polling.post(packets)

    async def upgrade(self, sid: str, upgrades: Sequence[str]) -> None:
        """Probe a WebSocket for session ``sid`` and have the reader switch to it.

        Does nothing unless polling carries the session and the server offers
        ``"websocket"``. A failed probe leaves the session on polling, as
        socket.io-client does.

        Cancellation: a WebSocket being probed is closed; the session stays on polling.
        """
        if self._ws is not None or self._polling is None or "websocket" not in upgrades:
            return
        ws: WebSocketClient | None = None
        ok = False
        try:
            ws = await self._dial.websocket(sid)
            await ws.send([encode_ws_frame(EioPacket(type=EioPacketType.PING, data=_PROBE))])
            answer = await _websocket_packets(ws, self._dial.limits)
            if answer != (EioPacket(type=EioPacketType.PONG, data=_PROBE),):
                logger.debug("probe answered with %r: staying on polling", answer)
                return
            self._probed = ws
            ok = True
        except (ConnectionFailedError, TransportClosed) as exc:
            logger.debug("websocket probe failed (%s): staying on polling", exc)
        finally:
            if not ok and ws is not None:
                await ws.aclose()

    async def aclose(self) -> None:
        """Close every stream of this connection (HTTP, WebSocket, a probe).

        Cancellation: the streams are closed forcefully.
        """
        if self._polling is not None:
            await self._polling.aclose()
        for ws in (self._probed, self._ws):
            if ws is not None:
                await ws.aclose()


async def open_engine_transport(
    url: EngineUrl,
    *,
    transports: Sequence[TransportName],
    headers: Sequence[tuple[str, str]],
    limits: Limits,
    ssl_context: ssl.SSLContext | None = None,
    stream_factory: StreamFactory | None = None,
) -> EngineTransport:
    """Open the first transport of ``transports`` (the handshake, for polling).

    Cancellation: nothing is left open.

    Raises:
        ConnectionFailedError: No connection, or the server refused the handshake
            (``status_code`` is its HTTP status).
    """
    dial = _Dial(
        url=url,
        headers=tuple(headers),
        limits=limits,
        ssl_context=ssl_context,
        stream_factory=stream_factory,
    )
    if transports[0] == "websocket":
        return EngineTransport(dial=dial, polling=None, ws=await dial.websocket(None))
    polling = _Polling(dial)
    ok = False
    try:
        status, body = await polling._get.request("GET", url.target("polling"), None)
        if status != 200:
            raise ConnectionFailedError(
                f"server refused the polling handshake with HTTP {status}", status_code=status
            )
        packets = decode_payload(body, limits)
        # The session reads the handshake again from these packets; the transport
        # needs only its sid, for every request after this one.
        polling.sid = decode_handshake(packets[0]).sid
        ok = True
    except TransportClosed as exc:
        raise ConnectionFailedError(f"polling handshake failed: {describe_failure(exc)}") from exc
    except RemoteProtocolError as exc:
        raise ConnectionFailedError(f"bad polling handshake: {exc}") from exc
    finally:
        if not ok:
            await polling.aclose()
    return EngineTransport(dial=dial, polling=polling, ws=None, pending=list(packets))
