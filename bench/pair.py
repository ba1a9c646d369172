"""Paired A/B: two roomcast servers measured side by side, at the same time.

Usage (from the repository root)::

    .venv/bin/python bench/pair.py --a ROOMCAST_LOG=off --b ROOMCAST_LOG=interval
    .venv/bin/python bench/pair.py --a-tree ../roomcast-main       # that checkout against this one
        [--scenario echo|rooms|fanout] [--rounds 3] [--seconds 10]

Both servers run on the server core at once (each gets about half of it), each driven by
its own load generator on the load generator core, with the scenario of ``bench/run.py``.
On a VM whose speed drifts by 10-20% within minutes, two separate runs cannot tell a
change of a few percent; two servers measured at the same time drift alike, so their
ratio can: the same server against itself comes out within about 1% of 1.0. A round
starts the two in turn (A first, then B first), and the report gives each round's rates,
each server's CPU time per operation, and the ratio B/A of both, then their medians.

What it measures is a ratio under these conditions (half a core each, the CPU's caches
shared by two servers), not what one server alone does: `bench/run.py` measures that.

``--a-tree``/``--b-tree`` run the roomcast of another checkout (its ``engine/`` and
``protocol/``, imported ahead of this one's through ``PYTHONPATH``) with this checkout's
contract app and virtual environment. ``--a``/``--b`` set environment variables of that
server (``NAME=VALUE``, repeatable: ``ROOMCAST_LOG``, ``ROOMCAST_METRICS``, ...).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = ["main", "parse_env", "per_operation", "ratios"]

BENCH: Final = Path(__file__).resolve().parent


def _load_run() -> ModuleType:
    """bench/run.py (its server and load generator helpers), loaded as a module."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_run", module)
    spec.loader.exec_module(module)
    return module


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as a dict.

    Raises:
        ValueError: One has no ``=`` or an empty name.
    """
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"not NAME=VALUE: {pair!r}")
        env[name] = value
    return env


def import_root(tree: Path, scratch: Path) -> Path:
    """A directory that imports ``roomcast`` from checkout ``tree`` (links to its
    ``engine/`` and ``protocol/``), made in ``scratch``.

    Raises:
        ValueError: ``tree`` is no roomcast checkout.
    """
    tree = tree.resolve()
    for part in ("engine", "protocol"):
        if not (tree / part / "__init__.py").is_file():
            raise ValueError(f"{tree} has no {part}/__init__.py: not a roomcast checkout")
    root = scratch / f"import-{len(list(scratch.iterdir()))}"
    (root / "roomcast").mkdir(parents=True)
    (root / "roomcast" / "engine").symlink_to(tree / "engine")
    (root / "roomcast" / "protocol").symlink_to(tree / "protocol")
    return root


def per_operation(result: dict[str, object]) -> tuple[float, float | None]:
    """A load generator result's rate (operations per second) and the server's CPU time
    per operation in microseconds (None when the load generator could not read it).

    Raises:
        ValueError: The run failed: no rate, or messages lost or unexpected.
    """
    rate = result.get("delivered_per_s")
    if not isinstance(rate, int | float) or rate <= 0:
        raise ValueError(f"no rate in the result: {result.get('failed') or result}")
    for key in ("loss", "anomalies", "protocol_errors", "disconnects"):
        if result.get(key):
            raise ValueError(f"{key}: {result[key]}")
    cpu = result.get("cpu")
    server_cpu = cpu.get("server_cpu") if isinstance(cpu, dict) else None
    if not isinstance(server_cpu, int | float):
        return float(rate), None
    return float(rate), server_cpu * 1e6 / rate


def ratios(rounds: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """The medians over rounds of B/A for the rate and A/B for the CPU time per
    operation (both above 1 when B is the faster)."""
    rate = [r["b_rate"] / r["a_rate"] for r in rounds if r["a_rate"] and r["b_rate"]]
    cpu = [r["a_us"] / r["b_us"] for r in rounds if r["a_us"] and r["b_us"]]
    return {
        "rate_b_over_a": statistics.median(rate) if rate else None,
        "cpu_a_over_b": statistics.median(cpu) if cpu else None,
    }


def one_round(
    run: ModuleType,
    scenario: str,
    sides: Sequence[tuple[str, dict[str, str]]],
    plan: object,
    run_dir: Path,
    index: int,
) -> dict[str, float | None]:
    """Both servers at once (started in the order of ``sides``), each with its own load
    generator (``plan``: bench/run.py's ``Plan``); their rates and CPU times per
    operation."""
    servers = []
    try:
        for label, env in sides:
            log_path = run_dir / f"{scenario}.{label}.{index}.log"
            servers.append((label, run.ServerProcess("roomcast", env, log_path)))
        loadgens = [
            (label, run.throughput_loadgen(server, plan, scenario)) for label, server in servers
        ]
        timeout = run._timed_run(plan)
        results = {label: loadgen.result(timeout) for label, loadgen in loadgens}
    finally:
        for _, server in servers:
            server.stop()
    row: dict[str, float | None] = {}
    for label in ("a", "b"):
        rate, us = per_operation(results[label])
        row[f"{label}_rate"], row[f"{label}_us"] = rate, us
    return row


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds, print the table, save it as JSON in bench/results/."""
    run = _load_run()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=tuple(run.THROUGHPUT_LOADS), default="echo")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--a", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--a-tree", type=Path, help="checkout whose roomcast A runs")
    parser.add_argument("--b-tree", type=Path, help="checkout whose roomcast B runs")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1.0 <= args.seconds <= 120.0:
        parser.error("--rounds must be 1..20 and --seconds 1..120")
    plan = run.Plan(quick=False, idle_max=0)
    plan.duration_s = args.seconds
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = run.RESULTS / f"pair-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="roomcast-pair-") as scratch:
        envs: dict[str, dict[str, str]] = {}
        for label, pairs, tree in (("a", args.a, args.a_tree), ("b", args.b, args.b_tree)):
            try:
                env = parse_env(pairs)
                if tree is not None:
                    env["PYTHONPATH"] = str(import_root(tree, Path(scratch)))
            except ValueError as exc:
                parser.error(str(exc))
            envs[label] = env
        rounds = []
        for index in range(args.rounds):
            order = ("a", "b") if index % 2 == 0 else ("b", "a")
            run.log(f"{args.scenario} round {index + 1}/{args.rounds}: {order[0]} starts first")
            started = time.monotonic()
            try:
                row = one_round(
                    run, args.scenario, [(s, envs[s]) for s in order], plan, run_dir, index
                )
            except (RuntimeError, ValueError) as exc:
                run.log(f"round {index + 1} failed: {exc}")
                return 1
            run.log(f"round {index + 1} took {time.monotonic() - started:.0f} s")
            rounds.append(row)
    unit = "round trips/s" if args.scenario == "echo" else "deliveries/s"
    lines = [
        f"| round | A ({unit}) | B | A: server us/op | B | B/A rate | A/B us/op |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index, r in enumerate(rounds, 1):
        lines.append(
            f"| {index} | {_fmt(r['a_rate'], 0)} | {_fmt(r['b_rate'], 0)} | {_fmt(r['a_us'])}"
            f" | {_fmt(r['b_us'])} | {_fmt(ratios([r])['rate_b_over_a'], 3)}"
            f" | {_fmt(ratios([r])['cpu_a_over_b'], 3)} |"
        )
    summary = ratios(rounds)
    lines.append(
        f"| median | | | | | {_fmt(summary['rate_b_over_a'], 3)}"
        f" | {_fmt(summary['cpu_a_over_b'], 3)} |"
    )
    table = "\n".join(lines)
    print(f"A: {' '.join(args.a) or '(defaults)'} {args.a_tree or 'this checkout'}")
    print(f"B: {' '.join(args.b) or '(defaults)'} {args.b_tree or 'this checkout'}")
    print(table)
    report = {
        "scenario": args.scenario,
        "seconds": args.seconds,
        "a": {"env": args.a, "tree": str(args.a_tree) if args.a_tree else None},
        "b": {"env": args.b, "tree": str(args.b_tree) if args.b_tree else None},
        "rounds": rounds,
        "median": summary,
    }
    (run_dir / "pair.json").write_text(json.dumps(report, indent=2) + "\n")
    (run_dir / "pair.md").write_text(table + "\n")
    run.log(f"saved {run_dir / 'pair.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
