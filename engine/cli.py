"""The ``roomcast`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from roomcast.engine.server import Server

__all__ = ["load_server", "main"]

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
    trio.run(serve_until_signal, server, args.host, args.port)
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
