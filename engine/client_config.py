"""One frozen ClientConfig: every option, limit and timer of ``open_client``.

Names follow socket.io-client's options (in snake case), with its defaults where it has
one: ``reconnection``, ``reconnection_attempts``, ``reconnection_delay``,
``reconnection_delay_max``, ``randomization_factor``, ``timeout``, ``transports``,
``upgrade``, ``path``. Durations are float seconds (npm's are milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias

import attrs

from roomcast.engine.transport.eio_client import TransportName
from roomcast.protocol import DEFAULT_LIMITS, JSON_PARSER, MSGPACK_PARSER, Limits, Parser

__all__ = ["ClientConfig", "ManagerEvent", "MANAGER_EVENTS"]

ManagerEvent: TypeAlias = Literal[
    "reconnect_attempt", "reconnect", "reconnect_error", "reconnect_failed", "upgrade"
]
"""Events of the connection manager (npm's ``socket.io.on(...)``, and ``upgrade`` of its
``socket.io.engine``), not of a namespace."""
MANAGER_EVENTS: Final[frozenset[str]] = frozenset(
    {"reconnect_attempt", "reconnect", "reconnect_error", "reconnect_failed", "upgrade"}
)
_PARSERS: Final[Mapping[str, Parser]] = {"json": JSON_PARSER, "msgpack": MSGPACK_PARSER}
_TRANSPORTS: Final = frozenset({"polling", "websocket"})


def _parser(value: Literal["json", "msgpack"] | Parser) -> Parser:
    if not isinstance(value, str):
        return value
    try:
        return _PARSERS[value]
    except KeyError:
        raise ValueError(f"parser must be 'json', 'msgpack' or a Parser, not {value!r}") from None


def _transports(value: Iterable[TransportName]) -> tuple[TransportName, ...]:
    if isinstance(value, str):
        raise TypeError("transports is a sequence of names: use ('websocket',), not 'websocket'")
    names = tuple(value)
    if not names or len(set(names)) != len(names) or not set(names) <= _TRANSPORTS:
        raise ValueError(f"transports must be distinct names of 'polling', 'websocket': {names!r}")
    return names


def _headers(
    value: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    return tuple(value.items()) if isinstance(value, Mapping) else tuple(value)


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _attempts(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"reconnection_attempts must be >= 0 or None, got {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"randomization_factor must be within [0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class ClientConfig:
    """How ``open_client`` connects, reconnects and bounds what it holds.

    Attributes:
        path: The Engine.IO path on the server.
        transports: Transports in order of use. ``("websocket",)`` (the default here;
            npm's is ``("polling", "websocket")``) opens a WebSocket at once;
            ``("polling", "websocket")`` starts on HTTP long-polling and upgrades;
            ``("polling",)`` stays on polling.
        upgrade: Whether a session started on polling tries the WebSocket upgrade.
        headers: Extra HTTP headers for every request (polling and WebSocket).
        parser: ``"json"`` (socket.io-parser, the default of every client),
            ``"msgpack"`` (socket.io-msgpack-parser), or a ``Parser``.
        reconnection: Reconnect when the connection drops (not after the server or the
            client disconnected on purpose).
        retry_first_connection: Retry the first connection too, with the same backoff
            and attempts, while it cannot be opened (socket.io-client does;
            python-socketio's ``connect(retry=True)``). Off: ``open_client`` raises
            ``ConnectionFailedError`` at once. A refused namespace is never retried.
        reconnection_attempts: Give up after this many failed attempts in a row
            (``None``: never, npm's ``Infinity``); namespaces then end with
            ``"reconnect failed"``.
        reconnection_delay: Seconds before the first reconnect attempt; it doubles on
            each failed attempt...
        reconnection_delay_max: ...up to this.
        randomization_factor: Each delay is spread by up to this fraction of itself.
        timeout: Seconds each connection attempt may take, from TCP connect to every
            namespace answered.
        close_timeout: Seconds the clean close on exit may take.
        max_buffered_events: Most events waiting for the dispatcher, and most events
            waiting in each namespace for ``receive``; one more is ``EventOverrunError``.
        outbox_size: Most packets waiting for the writer; ``emit`` waits when full.
        send_buffer_size: Most ``emit`` calls kept per namespace while it reconnects
            (npm's ``sendBuffer``); they are sent, in order, once it is connected again.
            When it is full, ``emit`` waits for the connection instead.
        limits: Bounds on what the server may make us decode.
    """

    path: str = "/socket.io/"
    transports: tuple[TransportName, ...] = attrs.field(
        default=("websocket",), converter=_transports
    )
    upgrade: bool = True
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers)
    parser: Parser = attrs.field(default=JSON_PARSER, converter=_parser)
    reconnection: bool = True
    retry_first_connection: bool = False
    reconnection_attempts: int | None = attrs.field(default=None, validator=_attempts)
    reconnection_delay: float = attrs.field(default=1.0, validator=_non_negative)
    reconnection_delay_max: float = attrs.field(default=5.0, validator=_non_negative)
    randomization_factor: float = attrs.field(default=0.5, validator=_fraction)
    timeout: float = attrs.field(default=20.0, validator=_positive)
    close_timeout: float = attrs.field(default=2.0, validator=_non_negative)
    max_buffered_events: int = attrs.field(default=256, validator=_at_least_one)
    outbox_size: int = attrs.field(default=256, validator=_at_least_one)
    send_buffer_size: int = attrs.field(default=256, validator=_at_least_one)
    limits: Limits = DEFAULT_LIMITS

    def __attrs_post_init__(self) -> None:
        if self.reconnection_delay > self.reconnection_delay_max:
            raise ValueError("need reconnection_delay <= reconnection_delay_max")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
