"""The ``roomcast`` command line."""

from __future__ import annotations

import argparse
import datetime
import errno
import importlib
import importlib.metadata
import json
import logging
import math
import signal
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, TypeVar

import attrs
import trio

from roomcast.engine.errors import EngineError
from roomcast.engine.log import FsyncPolicy, LogLockedError
from roomcast.engine.log.reader import (
    is_log_directory,
    iter_records,
    json_value,
    log_stats,
    record_to_json,
    verify_log,
)
from roomcast.engine.log.segment import Corruption
from roomcast.engine.log.timeline import BoundaryKind, MarkKind, Timeline, TimelineBuilder
from roomcast.engine.log.timeline_svg import render_html, render_svg
from roomcast.engine.presence import presence_at
from roomcast.engine.progress import TerminalProgress, terminal_progress
from roomcast.engine.recovery import RecoveryConfig
from roomcast.engine.replay import ReplayStep, replay
from roomcast.engine.runtime import tune_gc
from roomcast.engine.server import Server
from roomcast.protocol import LogRecord, LogValue, SioPacket

if TYPE_CHECKING:
    from roomcast.engine.adapters.redis import RedisCluster

__all__ = [
    "CommandError",
    "add_server_options",
    "apply_server_options",
    "build_parser",
    "format_record",
    "load_server",
    "main",
    "run_server",
    "serve_until_signal",
    "tls_context",
]

logger = logging.getLogger("roomcast")

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_T = TypeVar("_T")


class CommandError(EngineError):
    """What the ``roomcast`` command reports as one line on stderr, with exit status 2
    (a mistake in what it was asked to do, not a bug: no traceback)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit status 2, as argparse's own)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        return importlib.metadata.version("roomcast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return int(text)


def load_server(spec: str) -> Server:
    """Import ``MODULE:ATTR`` and return the Server it names (ATTR may be a factory,
    called with no arguments). MODULE is looked up in the current directory first.

    Raises:
        CommandError: The spec is malformed, its module or attribute does not exist, or it
            does not name a Server.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR, got {spec!r}")
    # The current directory, as ``python -m`` has it (absolute: a relative entry's
    # cached finder would not notice a change of directory).
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise CommandError(
                f"no module named {missing!r} (looked in the current directory and sys.path)"
            ) from None
        # The app's module exists but imports something that does not.
        raise CommandError(f"module {module_name!r} cannot be imported: {exc}") from None
    finally:
        sys.path.pop(0)
    if not hasattr(module, attr):
        raise CommandError(f"no attribute {attr!r} in module {module_name!r}")
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, Server):
        obj = obj()
    if not isinstance(obj, Server):
        raise CommandError(f"{spec} is not a roomcast Server (got {type(obj).__name__})")
    return obj


# ------------------------------------------------------------------ the operator's flags


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add the operator's flags to ``parser`` (those of ``roomcast serve``; the seed
    example takes them too). ``apply_server_options`` applies them."""
    group = parser.add_argument_group(
        "operator settings",
        "Each flag given overrides what the app built its Server with; a flag not given"
        " leaves the app's own setting.",
    )
    group.add_argument(
        "--log-dir",
        metavar="DIR",
        help="the event log's directory (default: the app's, normally ./roomcast-log);"
        " turns the log on if the app had it off",
    )
    group.add_argument(
        "--fsync",
        choices=[policy.value for policy in FsyncPolicy],
        help="when the event log syncs to disk: always (before each batch is acknowledged),"
        " interval (at most every fsync_interval, 5 ms by default; the default), never (on"
        " segment roll and close only: survives a crash of the process, not of the"
        " machine); turns the log on if the app had it off",
    )
    group.add_argument(
        "--no-log",
        action="store_true",
        help="keep no event log at all (no files; recovery then does not survive a"
        " restart, and replay has nothing to read)",
    )
    group.add_argument(
        "--recovery",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="connection state recovery on or off (default: as the app has it)",
    )
    group.add_argument(
        "--recovery-window",
        type=_positive_float,
        metavar="SECONDS",
        help="how long a disconnected client's session is kept for its recovery"
        " (max_disconnection_duration, 120 by default); turns recovery on",
    )
    group.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser Origin allowed to connect, e.g. https://app.example (repeat for"
        " several; * for any). Replaces the app's list; a page this server serves itself is"
        " always allowed",
    )
    group.add_argument(
        "--ping-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="Engine.IO heartbeat: seconds between a PONG and the next PING (default 25)",
    )
    group.add_argument(
        "--ping-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds a client has to answer a PING before it is dropped (default 20)",
    )
    group.add_argument(
        "--max-payload",
        type=_positive_int,
        metavar="BYTES",
        help="largest Engine.IO message, polling body or binary attachment (default"
        " 1000000; sent to clients as maxPayload)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help="run as one node of a cluster through this Redis (redis://host:port/db), with"
        " the cluster's shared log in Redis: the node then keeps no log files",
    )
    group.add_argument(
        "--cluster",
        metavar="NAME",
        default="roomcast",
        help="with --redis: the cluster's name, the prefix of its channels (default roomcast)",
    )
    group.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at GET /metrics on the same port (needs the metrics"
        " extra, prometheus-client)",
    )
    group.add_argument(
        "--certfile",
        metavar="PEM",
        help="serve over TLS (https:// and wss:// on the same port) with this certificate"
        " chain (PEM, the server's certificate first); needs --keyfile unless the key is in"
        " the same file",
    )
    group.add_argument(
        "--keyfile",
        metavar="PEM",
        help="with --certfile: the certificate's private key (PEM, unencrypted)",
    )


def apply_server_options(server: Server, args: argparse.Namespace) -> RedisCluster | None:
    """Apply the flags ``add_server_options`` added to ``server``'s settings (before it
    serves); return the Redis cluster to run with it (``--redis``), or None.

    Raises:
        CommandError: Flags that contradict each other.
    """
    config = server.config
    log = config.log
    if args.no_log and (args.log_dir is not None or args.fsync is not None):
        raise CommandError("--no-log contradicts --log-dir and --fsync")
    if args.redis is not None and (args.log_dir is not None or args.fsync is not None):
        raise CommandError("with --redis the log is the cluster's, in Redis: no --log-dir, --fsync")
    if args.recovery is False and args.recovery_window is not None:
        raise CommandError("--recovery-window needs recovery on (not --no-recovery)")
    if args.no_log:
        log = attrs.evolve(log, enabled=False)
    if args.log_dir is not None:
        log = attrs.evolve(log, enabled=True, directory=args.log_dir)
    if args.fsync is not None:
        log = attrs.evolve(log, enabled=True, fsync=args.fsync)
    recovery = server.recovery
    if args.recovery is False:
        recovery = None
    elif args.recovery or args.recovery_window is not None:
        recovery = recovery or RecoveryConfig()
        if args.recovery_window is not None:
            recovery = attrs.evolve(recovery, max_disconnection_duration=args.recovery_window)
    if args.allow_origin:
        origins: tuple[str, ...] = tuple(args.allow_origin)
        server.cors_allowed_origins = "*" if "*" in origins else origins
    limits = config.limits
    if args.max_payload is not None:
        limits = attrs.evolve(limits, max_payload_bytes=args.max_payload)
    cluster: RedisCluster | None = None
    if args.redis is not None:
        cluster = _redis_cluster(args.redis, args.cluster)
        # The cluster's log is in Redis: the node keeps no files of its own.
        log = attrs.evolve(log, enabled=False)
    try:
        server.reconfigure(
            config=attrs.evolve(
                config,
                log=log,
                limits=limits,
                ping_interval=args.ping_interval or config.ping_interval,
                ping_timeout=args.ping_timeout or config.ping_timeout,
                metrics=args.metrics or config.metrics,
            ),
            recovery=recovery,
            adapter_factory=None if cluster is None else cluster.adapter_factory,
        )
    except ImportError as exc:  # --metrics without the metrics extra
        raise CommandError(f"--metrics: {exc}") from None
    return cluster


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server TLS context ``--certfile``/``--keyfile`` ask for (None: plain TCP).

    Raises:
        CommandError: ``--keyfile`` without ``--certfile``, or the files cannot be loaded.
    """
    if args.certfile is None:
        if args.keyfile is not None:
            raise CommandError("--keyfile needs --certfile")
        return None
    # Python's defaults for a server: TLS 1.2 or later, its cipher list, no client
    # certificates asked for.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"--certfile {args.certfile}: cannot load it: {exc}") from None
    return context


def _redis_cluster(url: str, name: str) -> RedisCluster:
    try:
        from roomcast.engine.adapters.redis import RedisCluster, RedisSettings
    except ImportError as exc:
        raise CommandError(f"--redis needs the redis extra (coredis): {exc}") from None
    try:
        settings = RedisSettings(url=url, channel_prefix=name, shared_log=True)
    except ValueError as exc:
        raise CommandError(f"--redis {url} --cluster {name}: {exc}") from None
    return RedisCluster(settings=settings)


# ------------------------------------------------------------------ serving


async def serve_until_signal(
    server: Server, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (over TLS with
    ``ssl_context``).

    Cancellation: the server shuts down as on a signal.
    """
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(server.serve, host, port, ssl_context=ssl_context))
        scheme = "http" if ssl_context is None else "https"
        print(f"roomcast serving on {scheme}://{bound[0]}:{bound[1]}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("received %s, shutting down", signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()


async def _serve_node(
    server: Server,
    cluster: RedisCluster,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """Serve as one node of ``cluster`` until SIGINT/SIGTERM (the cluster is left last)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        await serve_until_signal(server, host, port, ssl_context)
        nursery.cancel_scope.cancel()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _cannot_listen(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)


def run_server(
    server: Server,
    host: str,
    port: int,
    *,
    cluster: RedisCluster | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``server`` (as a node of ``cluster``, if given; over TLS with
    ``ssl_context``) until SIGINT or SIGTERM.

    Raises:
        CommandError: Its event log directory is open by another process, or the address
            is in use or not this machine's.
    """
    tune_gc()
    problem: str | None = None
    try:
        if cluster is None:
            trio.run(serve_until_signal, server, host, port, ssl_context)
        else:
            trio.run(_serve_node, server, cluster, host, port, ssl_context)
    except* LogLockedError as group:
        locked = _leaves(group)[0]
        assert isinstance(locked, LogLockedError)
        holder = "another process" if locked.pid is None else f"process {locked.pid}"
        problem = (
            f"the event log directory {locked.directory} is already open by {holder}"
            " (another server?): stop it, or give this one another --log-dir"
        )
    except* OSError as group:
        listening, other = group.split(_cannot_listen)
        if other is not None:
            raise other from None  # not the user's to fix: it keeps its traceback
        assert listening is not None
        problem = f"cannot listen on {host}:{port}: {_leaves(listening)[0]}"
    if problem is not None:
        raise CommandError(problem)


def _serve(args: argparse.Namespace) -> int:
    server = load_server(args.app)
    cluster = apply_server_options(server, args)
    run_server(server, args.host, args.port, cluster=cluster, ssl_context=tls_context(args))
    return 0


# ------------------------------------------------------------------ replay and log


def _parse_bound(text: str) -> tuple[str, float]:
    """``--since``/``--until``: an integer is an offset; ``@SECONDS`` a Unix time; anything
    else an ISO 8601 date-time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return "offset", int(text)
    try:
        if text.startswith("@"):
            value = float(text[1:])
            if not math.isfinite(value):
                raise ValueError
            return "time", value
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an offset, @UNIX_SECONDS or an ISO 8601 time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return "time", moment.timestamp()


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _render(value: LogValue) -> str:
    if isinstance(value, bytes):
        return repr(value) if len(value) <= 32 else f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)}: {_render(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def format_record(record: LogRecord) -> str:
    """One record as one readable line (the default output of ``roomcast replay``)."""
    parts = [
        _iso(record.time),
        record.namespace or "-",
        record.room or "-",
        f"#{record.offset}",
        record.kind.name.lower(),
    ]
    if record.sender is not None:
        parts.append(f"from {record.sender}")
    if record.event is not None:
        parts.append(record.event)
    if record.args:
        parts.append(_render(list(record.args)))
    return " ".join(parts)


def _packet_json(packet: SioPacket) -> dict[str, object]:
    fields: dict[str, object] = {"type": type(packet).__name__.lower()}
    for name, value in attrs.asdict(packet, recurse=False).items():
        fields[name] = json_value(value)
    return fields


def _print_step(step: ReplayStep, *, as_json: bool) -> None:
    if as_json:
        line = {
            "record": record_to_json(step.record),
            "action": step.action.value,
            "handled": step.handled,
            "result": json_value(step.result),
            "error": step.error,
            "note": step.note,
            "deliveries": [
                {"sid": d.sid, "packet": _packet_json(d.packet)} for d in step.deliveries
            ],
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)
        return
    print(format_record(step.record))
    if step.result is not None:
        print(f"    => {_render(list(step.result))}")
    if step.error is not None:
        print(f"    !! {step.error}")
    if step.note is not None:
        print(f"    .. {step.note}")
    for delivery in step.deliveries:
        print(f"    -> {delivery.sid}: {delivery.packet!r}")
    sys.stdout.flush()


def _shared_records(
    url: str,
    prefix: str,
    *,
    since_offset: int | None,
    until_offset: int | None,
    on_damaged: Callable[[str], None],
) -> list[LogRecord]:
    """The records of a cluster's shared log (read from Redis in one go)."""
    import coredis

    from roomcast.engine.adapters.redis_log import read_shared_log

    async def read() -> list[LogRecord]:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(url, decode_responses=False)
        async with client:
            return await read_shared_log(
                client,
                prefix,
                since_offset=since_offset,
                until_offset=until_offset,
                on_damaged=on_damaged,
            )

    return trio.run(read)


def _replay(args: argparse.Namespace) -> int:
    problem = _replay_usage_problem(args)
    if problem is not None:
        print(f"roomcast replay: {problem}", file=sys.stderr)
        return 2
    timeline = _replay_timeline(args)
    directory = Path(args.logdir) if args.logdir is not None else None
    if directory is not None:
        _check_log_directory(directory)
    # Records printed to a terminal show the progress themselves, and a status line
    # between them would be torn apart: the line is for output that goes elsewhere.
    progress = (
        terminal_progress("roomcast replay", sys.stderr)
        if timeline is not None or not sys.stdout.isatty()
        else None
    )
    damage = _DamageReport(progress=progress, timeline=timeline)
    bounds = _ReplayBounds.of(args)
    if args.presence is not None:  # who was where: every namespace and room
        args.namespace, args.room = None, None
    records: Iterable[LogRecord]
    if directory is not None:
        # A timeline needs the members' connects and disconnects and the server's own
        # records too, not only the room's.
        records = iter_records(
            directory,
            namespace=args.namespace if timeline is None else None,
            room=args.room if timeline is None else None,
            since_offset=bounds.since_offset,
            until_offset=bounds.until_offset,
            since_time=bounds.since_time,
            until_time=bounds.until_time,
            epoch=args.epoch,
            on_corrupt=damage.record,
            on_progress=progress,
        )
    else:
        shared = _read_shared_for_replay(args, bounds, damage)
        if shared is None:
            return 2
        records = shared
    try:
        if args.presence is not None:
            _print_presence(records, args.presence_namespace, args.presence, as_json=args.json)
        elif timeline is None:
            _print_records(records, args)
        else:
            for record in records:
                timeline.add(record)
    finally:
        if progress is not None:
            progress.close()
    if timeline is not None and args.presence is None:
        _write_timeline(timeline.build(), Path(args.timeline))
    return 1 if damage.found else 0


def _replay_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with how ``roomcast replay`` was called (exit status 2), if anything."""
    if (args.presence is None) != (args.at is None):
        return "--presence needs --at" if args.at is None else "--at goes with --presence"
    if (args.logdir is None) == (args.redis is None):
        return "give a LOGDIR or --redis URL (one of them)"
    return None


def _replay_timeline(args: argparse.Namespace) -> TimelineBuilder | None:
    """The timeline ``--timeline`` asks for, or None.

    Raises:
        CommandError: ``--timeline`` is given without ``--room``, with ``--app`` or
            ``--json``, or with a file that is neither SVG nor HTML.
    """
    if args.timeline is None:
        return None
    if args.room is None:
        raise CommandError("--timeline draws one room: give --room")
    if args.app is not None or args.json:
        raise CommandError("--timeline writes a picture: not with --app or --json")
    if Path(args.timeline).suffix.lower() not in (".svg", ".html", ".htm"):
        raise CommandError(f"--timeline {args.timeline}: the file must end in .svg or .html")
    return TimelineBuilder(namespace=args.namespace or "/", room=args.room)


@attrs.define(eq=False)
class _DamageReport:
    """Reports each damaged record or entry ``roomcast replay`` meets on stderr (and on
    the timeline), and remembers that there was some (exit status 1)."""

    progress: TerminalProgress | None
    timeline: TimelineBuilder | None
    found: int = 0

    def record(self, corruption: Corruption) -> None:
        """A damaged record of an event-log directory."""
        self.found += 1
        if self.progress is not None:
            self.progress.interrupt()
        if self.timeline is not None:
            self.timeline.damage(corruption.describe())
        print(f"roomcast replay: damaged record: {corruption.describe()}", file=sys.stderr)

    def entry(self, detail: str) -> None:
        """A damaged entry of a cluster's shared log."""
        self.found += 1
        print(f"roomcast replay: damaged entry: {detail}", file=sys.stderr)


@attrs.frozen(kw_only=True)
class _ReplayBounds:
    """The records ``roomcast replay`` reads: inclusive bounds, None for unbounded."""

    since_offset: int | None = None
    until_offset: int | None = None
    since_time: float | None = None
    until_time: float | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> _ReplayBounds:
        """The bounds ``--since`` and ``--until`` give; with ``--presence``, every record
        up to ``--at`` (joins, leaves, connects and the server's restarts)."""
        if args.presence is not None:
            edges = {"until": args.at}
        else:
            edges = {"since": args.since, "until": args.until}
        found: dict[str, float] = {}
        for edge, bound in edges.items():
            if bound is not None:
                what, value = bound
                found[f"{edge}_{what}"] = value
        since_offset, until_offset = found.get("since_offset"), found.get("until_offset")
        return cls(
            since_offset=None if since_offset is None else int(since_offset),
            until_offset=None if until_offset is None else int(until_offset),
            since_time=found.get("since_time"),
            until_time=found.get("until_time"),
        )


def _read_shared_for_replay(
    args: argparse.Namespace, bounds: _ReplayBounds, damage: _DamageReport
) -> list[LogRecord] | None:
    """The records of the cluster's shared log at ``--redis`` that ``roomcast replay``
    shows (all of them for a timeline, else those of ``--namespace`` and ``--room``),
    or None when Redis cannot be read (said on stderr)."""
    import coredis.exceptions

    failure: str | None = None
    shared: list[LogRecord] = []
    try:
        shared = _shared_records(
            args.redis,
            args.prefix,
            since_offset=bounds.since_offset,
            until_offset=bounds.until_offset,
            on_damaged=damage.entry,
        )
    except* (coredis.exceptions.RedisError, OSError, TimeoutError) as group:
        failure = "; ".join(repr(exc) for exc in group.exceptions)
    if failure is not None:
        print(f"roomcast replay: cannot read the shared log: {failure}", file=sys.stderr)
        return None
    since_time, until_time = bounds.since_time, bounds.until_time
    everything = args.timeline is not None
    return [
        r
        for r in shared
        if (everything or args.namespace is None or r.namespace == args.namespace)
        and (everything or args.room is None or r.room == args.room)
        and (since_time is None or r.time >= since_time)
        and (until_time is None or r.time <= until_time)
        and (args.epoch is None or r.epoch == args.epoch)
    ]


def _write_timeline(timeline: Timeline, path: Path) -> None:
    if not timeline.records:
        raise CommandError(
            f"no record of room {timeline.room!r} in namespace {timeline.namespace!r} in this"
            " window (--namespace names another namespace)"
        )
    html = path.suffix.lower() in (".html", ".htm")
    path.write_text(render_html(timeline) if html else render_svg(timeline), encoding="utf-8")
    crashes = sum(b.kind is BoundaryKind.CRASH for b in timeline.boundaries)
    recoveries = sum(m.kind is MarkKind.RECOVERED for lane in timeline.lanes for m in lane.marks)
    print(
        f"{path}: room {timeline.room!r} ({timeline.namespace}) from {_iso(timeline.start)} to"
        f" {_iso(timeline.end)}: {len(timeline.lanes)} member(s),"
        f" {len(timeline.messages) + timeline.messages_not_drawn} message(s),"
        f" {len(timeline.epochs)} epoch(s), {crashes} crash(es), {recoveries} recovery(ies)"
    )


def _print_records(records: Iterable[LogRecord], args: argparse.Namespace) -> None:
    """Print (or, with ``--app``, re-drive and print) the records ``replay`` selected."""
    if args.app is not None:
        server = load_server(args.app)
        trio.run(
            lambda: replay(
                records, server, on_step=lambda step: _print_step(step, as_json=args.json)
            )
        )
        return
    epoch: str | None = None
    for record in records:
        if args.json:
            print(json.dumps(record_to_json(record), ensure_ascii=False))
            continue
        if record.epoch != epoch:
            epoch = record.epoch
            print(f"# epoch {epoch}")
        print(format_record(record))
    sys.stdout.flush()


def _with_progress(label: str, work: Callable[[TerminalProgress | None], _T]) -> _T:
    """Run ``work`` with a progress line on stderr when it is a terminal (erased after)."""
    progress = terminal_progress(label, sys.stderr)
    try:
        return work(progress)
    finally:
        if progress is not None:
            progress.close()


def _print_presence(
    records: Iterable[LogRecord], namespace: str, room: str, *, as_json: bool
) -> None:
    """``replay --presence``: who was in the room, one key a line (or one JSON object)."""
    members = presence_at(records, namespace=namespace, room=room)
    if as_json:
        found = [{"key": m.key, "meta": m.meta, "connections": m.connections} for m in members]
        print(json.dumps({"namespace": namespace, "room": room, "members": found}))
    else:
        print(f"# {len(members)} present in {room!r} ({namespace})")
        for member in members:
            meta = json.dumps(member.meta, ensure_ascii=False)
            print(f"{member.key}\t{member.connections} connection(s)\t{meta}")
    sys.stdout.flush()


def _verify(args: argparse.Namespace) -> int:
    report = _with_progress(
        "roomcast log verify", lambda progress: verify_log(args.logdir, on_progress=progress)
    )
    if args.json:
        data = attrs.asdict(report)
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return 0 if report.ok else 1
    if report.ok:
        print(
            f"{report.directory}: OK: {report.segments} segment(s), {report.records}"
            f" record(s), {report.bytes} bytes, epoch {report.epoch}"
        )
    else:
        print(f"{report.directory}: DAMAGED: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  {problem.describe()}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0 if report.ok else 1


def _check_log_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory")
    if not is_log_directory(directory):
        raise CommandError(
            f"{directory} is not an event log (no epoch.json and no segments):"
            " `roomcast log verify` says what is there"
        )


def _stats(args: argparse.Namespace) -> int:
    directory = Path(args.logdir)
    _check_log_directory(directory)
    try:
        stats = _with_progress(
            "roomcast log stats", lambda progress: log_stats(directory, on_progress=progress)
        )
    except ValueError as exc:
        print(f"roomcast log stats: {exc}", file=sys.stderr)
        return 1
    if args.json:
        data = attrs.asdict(stats)
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return 0
    started = "" if stats.epoch_started is None else f" since {_iso(stats.epoch_started)}"
    print(f"directory  {stats.directory}")
    print(f"epoch      {stats.epoch}{started} ({'; '.join(stats.epoch_reasons) or '-'})")
    print(f"segments   {stats.segments} ({stats.bytes} bytes)")
    span = ""
    if stats.first_time is not None and stats.last_time is not None:
        span = f" from {_iso(stats.first_time)} to {_iso(stats.last_time)}"
    print(f"records    {stats.records}{span}")
    print(f"epochs     {', '.join(stats.epochs) or '-'}")
    kinds = ", ".join(f"{kind} {count}" for kind, count in stats.kinds.items())
    print(f"kinds      {kinds or '-'}")
    if stats.damaged:
        print(f"damaged    {stats.damaged} region(s): run `roomcast log verify`")
    print("rooms")
    for room in stats.rooms:
        print(
            f"  {room.namespace or '-'} {room.room or '-'}: {room.count} record(s),"
            f" offsets {room.first_offset}..{room.last_offset}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roomcast`` command."""
    parser = _Parser(prog="roomcast", description="A Trio-native Socket.IO v5 real-time engine.")
    parser.add_argument("--version", action="version", version=f"roomcast {_version()}")
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run an app's Server (MODULE:ATTR)",
        description="Import MODULE:ATTR (a roomcast Server, or a function returning one),"
        " apply the operator settings below to it, and serve until SIGINT or SIGTERM. Exit"
        " status 2, with one line on stderr, when the app cannot be loaded or its event log"
        " directory is open by another server.",
    )
    serve.add_argument("app", help="MODULE:ATTR naming a roomcast Server or a factory of one")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on (5000)")
    add_server_options(serve)
    serve.set_defaults(func=_serve)

    play = commands.add_parser(
        "replay",
        help="print a log's records, filtered (or re-drive them against an app)",
        description="Print the records of the event log in LOGDIR (or of a cluster's shared"
        " log, with --redis), oldest first. --since and"
        " --until take an offset (an integer: the server-wide record number), @UNIX_SECONDS,"
        " or an ISO 8601 time (UTC"
        " unless it says otherwise); both bounds are inclusive. Exit status 1 if a damaged"
        " record was met (it is reported on stderr and reading goes on after it).",
    )
    play.add_argument("logdir", nargs="?", help="the event log directory")
    play.add_argument(
        "--redis",
        metavar="URL",
        help="read a cluster's shared log from this Redis instead of a directory",
    )
    play.add_argument(
        "--prefix",
        default="roomcast",
        help="with --redis: the cluster's channel prefix (default roomcast)",
    )
    play.add_argument("--namespace", help="only this namespace (e.g. /)")
    play.add_argument("--room", help="only this room")
    play.add_argument("--since", type=_parse_bound, help="from this offset or time")
    play.add_argument("--until", type=_parse_bound, help="up to this offset or time")
    play.add_argument("--epoch", help="only records of this epoch")
    play.add_argument("--json", action="store_true", help="one JSON object per line")
    play.add_argument(
        "--timeline",
        metavar="FILE",
        help="draw the --room over time into FILE (.svg, or .html: a page holding it): a lane"
        " per member from join to leave, messages, disconnects with their reasons,"
        " recoveries, crashes, epochs and the time the server was down (--namespace: /"
        " unless given)",
    )
    play.add_argument(
        "--presence",
        metavar="ROOM",
        help="print who was in ROOM at the moment --at names (by presence key, with their"
        " connections), from the log alone",
    )
    play.add_argument(
        "--at",
        type=_parse_bound,
        help="with --presence: the moment (an offset, @UNIX_SECONDS or an ISO 8601 time)",
    )
    play.add_argument(
        "--presence-namespace",
        default="/",
        help="with --presence: the room's namespace (default /)",
    )
    play.add_argument(
        "--app",
        help="MODULE:ATTR of the app's Server: re-drive the records against its handlers"
        " and print what each step did",
    )
    play.set_defaults(func=_replay)

    log = commands.add_parser("log", help="inspect an event log directory")
    log_commands = log.add_subparsers(dest="log_command", required=True)
    verify = log_commands.add_parser(
        "verify",
        help="check every record and the log's structure (exit status 1 if damaged)",
    )
    verify.add_argument("logdir", help="the event log directory")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify)
    stats = log_commands.add_parser("stats", help="count records by kind, epoch and room")
    stats.add_argument("logdir", help="the event log directory")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``roomcast`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.func(args)
    except CommandError as exc:
        command = " ".join(
            word for word in (args.command, getattr(args, "log_command", None)) if word
        )
        print(f"{parser.prog} {command}: error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
