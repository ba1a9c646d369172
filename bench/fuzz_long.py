"""Long fuzzing runs over every decoder and the HTTP and WebSocket fronts.

The targets are those of tests/fuzz/targets.py (CI runs them briefly under hypothesis).
Two engines:

- ``hypothesis`` (default): random and mutated inputs (the CI strategies), in rounds,
  shared out over ``--minutes`` across the targets; stops at the first failure and
  prints hypothesis's shrunk example.
- ``atheris``: coverage-guided (libFuzzer) on one target; ``pip install atheris`` first.
  Anything after ``--`` goes to libFuzzer (e.g. ``-max_total_time=600``).

Usage (docs/hardening.md)::

    python bench/fuzz_long.py --minutes 30
    python bench/fuzz_long.py --minutes 5 --targets http,websocket
    python bench/fuzz_long.py --engine atheris --targets sio_json -- -max_total_time=600
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final

import trio

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_ROUND: Final = 500
NAMES: Final = (
    "eio_frame",
    "eio_payload",
    "eio_handshake",
    "sio_json",
    "sio_msgpack",
    "json",
    "log",
    "websocket",
    "http",
)


def load_targets() -> dict[str, tuple[Callable[[bytes], None], list[bytes]]]:
    """Every target with its seed corpus (imported here, so that atheris can instrument
    roomcast as it is imported)."""
    from tests.fuzz.targets import TARGETS, http_front, websocket_stream
    from tests.fuzz.test_fuzz import CORPUS, HTTP_CORPUS, WEBSOCKET_CORPUS

    def websocket(data: bytes) -> None:
        trio.run(websocket_stream, data)
        trio.run(partial(websocket_stream, data, compression=True))

    def http(data: bytes) -> None:
        trio.run(http_front, data)

    targets: dict[str, tuple[Callable[[bytes], None], list[bytes]]] = {
        name: (target, CORPUS[name]) for name, target in TARGETS.items()
    }
    targets["websocket"] = (websocket, WEBSOCKET_CORPUS)
    targets["http"] = (http, HTTP_CORPUS)
    assert sorted(targets) == sorted(NAMES)
    return targets


def run_hypothesis(names: list[str], minutes: float) -> int:
    """Fuzz each target in turn for its share of the time; 1 at the first failure."""
    from hypothesis import HealthCheck, given, settings

    from tests.fuzz.test_fuzz import inputs

    targets = load_targets()
    share = minutes * 60 / len(names)
    for name in names:
        target, corpus = targets[name]
        examples = 0
        stop = time.monotonic() + share

        @settings(
            max_examples=_ROUND,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=inputs(corpus))
        def fuzz(data: bytes) -> None:
            target(data)  # noqa: B023 - each round runs before the loop moves on

        while time.monotonic() < stop:
            try:
                fuzz()
            except Exception:  # noqa: BLE001 - hypothesis printed it; report and stop
                print(f"{name}: FAILED after {examples} examples (the example is above)")
                return 1
            examples += _ROUND
        print(f"{name}: {examples} examples, no failure", flush=True)
    return 0


def run_atheris(name: str, libfuzzer_args: list[str]) -> int:
    """Coverage-guided fuzzing of one target (never returns until libFuzzer stops)."""
    try:
        atheris = importlib.import_module("atheris")  # optional, see the docstring
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["roomcast", "wsproto", "h11", "msgpack"]):
        target, corpus = load_targets()[name]
    corpus_dir = Path(tempfile.mkdtemp(prefix=f"roomcast-fuzz-{name}-"))
    for i, data in enumerate(corpus):
        (corpus_dir / f"seed-{i}").write_bytes(data)
    print(f"corpus: {corpus_dir}", flush=True)
    atheris.Setup([sys.argv[0], str(corpus_dir), *libfuzzer_args], target)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--targets", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}"
    )
    parser.add_argument("libfuzzer", nargs="*", help="after --: libFuzzer options (atheris)")
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    if args.engine == "atheris":
        if len(names) != 1:
            parser.error("atheris fuzzes one target at a time: give --targets NAME")
        return run_atheris(names[0], args.libfuzzer)
    return run_hypothesis(names, args.minutes)


if __name__ == "__main__":
    raise SystemExit(main())
