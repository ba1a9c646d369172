"""The ``roomcast`` command line."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs
import trio

from roomcast.engine.log.reader import (
    iter_records,
    log_stats,
    record_to_json,
    verify_log,
)
from roomcast.engine.log.replay import ReplayStep, replay
from roomcast.engine.log.segment import Corruption
from roomcast.engine.runtime import tune_gc
from roomcast.engine.server import Server
from roomcast.protocol._log import LogRecord, LogValue
from roomcast.protocol._sio import SioPacket

__all__ = ["build_parser", "format_record", "load_server", "main"]

logger = logging.getLogger("roomcast")


def load_server(spec: str) -> Server:
    """Import ``MODULE:ATTR`` and return the Server it names (ATTR may be a factory).

    Raises:
        SystemExit: The spec is malformed or does not name a Server.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    obj = getattr(module, attr, None)
    if callable(obj) and not isinstance(obj, Server):
        obj = obj()
    if not isinstance(obj, Server):
        raise SystemExit(f"{spec} is not a roomcast Server (got {type(obj).__name__})")
    return obj


async def serve_until_signal(server: Server, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    Cancellation: the server shuts down as on a signal.
    """
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        print(f"roomcast serving on http://{bound[0]}:{bound[1]}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("received %s, shutting down", signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()


def _serve(args: argparse.Namespace) -> int:
    server = load_server(args.app)
    tune_gc()
    trio.run(serve_until_signal, server, args.host, args.port)
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
        fields[name] = _jsonable(value)
    return fields


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _print_step(step: ReplayStep, *, as_json: bool) -> None:
    if as_json:
        line = {
            "record": record_to_json(step.record),
            "action": step.action.value,
            "handled": step.handled,
            "result": _jsonable(step.result),
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
    if (args.logdir is None) == (args.redis is None):
        print("roomcast replay: give a LOGDIR or --redis URL (one of them)", file=sys.stderr)
        return 2
    directory = Path(args.logdir) if args.logdir is not None else None
    if directory is not None and not directory.is_dir():
        print(f"roomcast replay: {directory} is not a directory", file=sys.stderr)
        return 2
    damaged: list[object] = []

    def report(corruption: Corruption) -> None:
        damaged.append(corruption)
        print(f"roomcast replay: damaged record: {corruption.describe()}", file=sys.stderr)

    def report_entry(detail: str) -> None:
        damaged.append(detail)
        print(f"roomcast replay: damaged entry: {detail}", file=sys.stderr)

    bounds: dict[str, float | None] = {
        "since_offset": None,
        "until_offset": None,
        "since_time": None,
        "until_time": None,
    }
    for edge in ("since", "until"):
        bound = getattr(args, edge)
        if bound is not None:
            what, value = bound
            bounds[f"{edge}_{what}"] = value
    since_offset = None if bounds["since_offset"] is None else int(bounds["since_offset"])
    until_offset = None if bounds["until_offset"] is None else int(bounds["until_offset"])
    records: Iterable[LogRecord]
    if directory is not None:
        records = iter_records(
            directory,
            namespace=args.namespace,
            room=args.room,
            since_offset=since_offset,
            until_offset=until_offset,
            since_time=bounds["since_time"],
            until_time=bounds["until_time"],
            epoch=args.epoch,
            on_corrupt=report,
        )
    else:
        import coredis.exceptions

        failure: str | None = None
        shared: list[LogRecord] = []
        try:
            shared = _shared_records(
                args.redis,
                args.prefix,
                since_offset=since_offset,
                until_offset=until_offset,
                on_damaged=report_entry,
            )
        except* (coredis.exceptions.RedisError, OSError, TimeoutError) as group:
            failure = "; ".join(repr(exc) for exc in group.exceptions)
        if failure is not None:
            print(f"roomcast replay: cannot read the shared log: {failure}", file=sys.stderr)
            return 2
        since_time, until_time = bounds["since_time"], bounds["until_time"]
        records = [
            r
            for r in shared
            if (args.namespace is None or r.namespace == args.namespace)
            and (args.room is None or r.room == args.room)
            and (since_time is None or r.time >= since_time)
            and (until_time is None or r.time <= until_time)
            and (args.epoch is None or r.epoch == args.epoch)
        ]
    if args.app is not None:
        server = load_server(args.app)
        trio.run(
            lambda: replay(
                records, server, on_step=lambda step: _print_step(step, as_json=args.json)
            )
        )
        return 1 if damaged else 0
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
    return 1 if damaged else 0


def _verify(args: argparse.Namespace) -> int:
    report = verify_log(args.logdir)
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


def _stats(args: argparse.Namespace) -> int:
    directory = Path(args.logdir)
    if not directory.is_dir():
        print(f"roomcast log stats: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        stats = log_stats(directory)
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
    parser = argparse.ArgumentParser(
        prog="roomcast", description="A Trio-native Socket.IO v5 real-time engine."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an app's Server (MODULE:ATTR)")
    serve.add_argument("app", help="MODULE:ATTR naming a roomcast Server or a factory of one")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.set_defaults(func=_serve)

    play = commands.add_parser(
        "replay",
        help="print a log's records, filtered (or re-drive them against an app)",
        description="Print the records of the event log in LOGDIR (or of a cluster's shared"
        " log, with --redis), oldest first. --since and"
        " --until take a room offset (an integer), @UNIX_SECONDS, or an ISO 8601 time (UTC"
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
