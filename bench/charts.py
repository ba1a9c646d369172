"""Draw the benchmark's charts (SVG) from a results file of bench/run.py.

Usage::

    python bench/charts.py bench/results/bench-<time>.json OUTDIR

writes ``OUTDIR/bench-throughput.svg`` (deliveries or round trips per second, per scenario
and server), ``OUTDIR/bench-latency.svg`` (p50 and p99 per scenario and server) and
``OUTDIR/bench-memory.svg`` (KiB per idle connection). ``bash bench/run.sh`` calls it after
every run; redraw the committed charts with ``OUTDIR`` = ``docs/img`` from the results file
whose table docs/benchmarks.md shows.

matplotlib lives in the bench's own venv, ``bench/.venv-charts`` (from the pinned
``bench/requirements-charts.txt``, made by bench/run.py's setup), never in roomcast's
dependencies: run with another Python, this script re-runs itself with that venv's.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["CHARTS", "draw_charts", "main", "server_order"]

JsonDict: TypeAlias = dict[str, object]

BENCH: Final = Path(__file__).resolve().parent
CHARTS_VENV: Final = BENCH / ".venv-charts"

CHARTS: Final = ("bench-throughput.svg", "bench-latency.svg", "bench-memory.svg")
"""The files `draw_charts` writes (docs/benchmarks.md links to them in docs/img/)."""

# The order of the bars: the peers first, then the ceilings. A server this list does not
# know (a newer bench/run.py) comes last, by name, so that the charts never drop a row.
KNOWN_SERVERS: Final = ("roomcast", "node", "psio", "trio-task", "trio-reactor", "null")
LABELS: Final = {
    "roomcast": "roomcast",
    "node": "Node socket.io",
    "psio": "python-socketio",
    "trio-task": "bare Trio, a task per socket",
    "trio-reactor": "bare Trio, one reactor task",
    "null": "null server (loadgen ceiling)",
}
COLOURS: Final = {
    "roomcast": "#1f6fb4",
    "node": "#3c9a3c",
    "psio": "#e08a1e",
    "trio-task": "#8a63b8",
    "trio-reactor": "#b35fa0",
    "null": "#8c8c8c",
}
OTHER_COLOURS: Final = ("#4a9fb0", "#b0a04a", "#b04a4a", "#4ab07a")

THROUGHPUT_SCENARIOS: Final = ("fanout", "rooms", "echo")
LATENCY_SCENARIOS: Final = ("fanout", "rooms", "echo", "idle", "idle-max")
MEMORY_SCENARIOS: Final = ("idle", "idle-max")
SCENARIO_TITLES: Final = {
    "fanout": "fan-out: 1 room x 1,000 (deliveries/s)",
    "rooms": "many rooms: 1,000 x 10 (deliveries/s)",
    "echo": "echo: 100 clients (round trips/s)",
    "idle": "idle: 10,000 connections",
    "idle-max": "idle-max",
}
RC: Final = {
    "svg.fonttype": "none",  # text stays text: searchable, and readable by the tests
    "svg.hashsalt": "roomcast-bench",  # stable ids, so a redraw of one file is no diff
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def server_order(servers: Sequence[str]) -> list[str]:
    """``servers`` in chart order: known ones in their fixed order, unknown ones last."""
    known = [name for name in KNOWN_SERVERS if name in servers]
    return known + sorted(name for name in servers if name not in KNOWN_SERVERS)


def _label(name: str) -> str:
    return LABELS.get(name, name)


def _colour(name: str, servers: Sequence[str]) -> str:
    if name in COLOURS:
        return COLOURS[name]
    unknown = [s for s in servers if s not in COLOURS]
    return OTHER_COLOURS[unknown.index(name) % len(OTHER_COLOURS)]


def _number(summary: Mapping[str, object], key: str) -> float | None:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _failed(summary: Mapping[str, object]) -> bool:
    return bool(summary.get("failed_runs"))


def _summary(report: JsonDict) -> dict[str, dict[str, JsonDict]]:
    summary = report.get("summary")
    if not isinstance(summary, dict):
        raise ValueError("not a bench/run.py results file: no 'summary'")
    return {
        str(scenario): {str(name): s for name, s in per.items() if isinstance(s, dict)}
        for scenario, per in summary.items()
        if isinstance(per, dict)
    }


def _compact(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.3g}"


def _ms(us: float) -> str:
    ms = us / 1000
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _subtitle(report: JsonDict) -> str:
    machine = report.get("machine")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    runs = report.get("runs_per_scenario")
    parts = [f"run {report.get('started_utc', '?')}"]
    if isinstance(runs, int):
        parts.append(f"median of {runs} run(s)" if runs > 1 else "one run")
    if isinstance(cpu, str):
        parts.append(cpu)
    return "; ".join(parts)


def _bar_group(
    axes: Axes,
    per: Mapping[str, JsonDict],
    servers: Sequence[str],
    values: Mapping[str, float | None],
    *,
    gid: str,
    text: dict[str, str],
) -> None:
    """One bar per server (in ``servers`` order), each labelled with ``text``; a failed
    or missing figure is a FAIL / n/a label at the baseline, not a bar."""
    for index, name in enumerate(servers):
        value = values.get(name)
        if name not in per:
            continue
        if _failed(per[name]) or value is None:
            label = "FAIL" if _failed(per[name]) else "n/a"
            _missing(axes, index, label, gid=f"{gid}-{name}-missing")
            continue
        (bar,) = axes.bar(index, value, color=_colour(name, servers), width=0.75)
        bar.set_gid(f"{gid}-{name}")
        axes.text(index, value, text[name], ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(servers)), [_label(s) for s in servers], rotation=30, ha="right")


def _missing(axes: Axes, index: int, label: str, *, gid: str) -> None:
    # At the foot of the axes whatever the scale (a log axis has no 0).
    axes.text(
        index, 0.02, label, ha="center", va="bottom", transform=axes.get_xaxis_transform(), gid=gid
    )


def _log_scale(axes: Axes, values: Sequence[float | None]) -> None:
    """A log y axis from the decade below the smallest value, so that bars start at a round
    number and their heights compare (matplotlib would start just below the smallest)."""
    present = [v for v in values if v is not None and v > 0]
    axes.set_yscale("log")
    if present:
        bottom = 10 ** math.floor(math.log10(min(present)))
        axes.set_ylim(bottom, max(present) * 3)  # room for the value labels


def _figure(columns: int, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.4 * columns, height), layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _throughput(report: JsonDict, summary: dict[str, dict[str, JsonDict]]) -> Figure | None:
    scenarios = [s for s in THROUGHPUT_SCENARIOS if s in summary]
    if not scenarios:
        return None
    figure, axes_list = _figure(len(scenarios))
    for axes, scenario in zip(axes_list, scenarios, strict=True):
        per = summary[scenario]
        servers = server_order(list(per))
        rates = {name: _number(per[name], "rate") for name in servers}
        text = {name: _compact(rate) for name, rate in rates.items() if rate is not None}
        _bar_group(axes, per, servers, rates, gid=f"throughput-{scenario}", text=text)
        axes.set_title(SCENARIO_TITLES.get(scenario, scenario))
        # The ceilings are 10-100x the servers: a log scale keeps both readable.
        _log_scale(axes, list(rates.values()))
        axes.grid(axis="y", which="major", alpha=0.3)
    figure.suptitle(f"Throughput (higher is better; log scale)\n{_subtitle(report)}")
    return figure


def _latency(report: JsonDict, summary: dict[str, dict[str, JsonDict]]) -> Figure | None:
    scenarios = [s for s in LATENCY_SCENARIOS if s in summary]
    if not scenarios:
        return None
    figure, axes_list = _figure(len(scenarios))
    for axes, scenario in zip(axes_list, scenarios, strict=True):
        per = summary[scenario]
        servers = server_order(list(per))
        for index, name in enumerate(servers):
            p50, p99 = _number(per[name], "p50_us"), _number(per[name], "p99_us")
            if _failed(per[name]) or p50 is None or p99 is None:
                label = "FAIL" if _failed(per[name]) else "n/a"
                _missing(axes, index, label, gid=f"latency-{scenario}-{name}-missing")
                continue
            colour = _colour(name, servers)
            # p99 as a bar, p50 as a point on it: where most messages are, and the tail.
            (bar,) = axes.bar(index, p99 / 1000, color=colour, alpha=0.35, width=0.75)
            bar.set_gid(f"latency-{scenario}-{name}-p99")
            (point,) = axes.plot([index], [p50 / 1000], "o", color=colour)
            point.set_gid(f"latency-{scenario}-{name}-p50")
            axes.text(
                index, p99 / 1000, f"{_ms(p50)} / {_ms(p99)}", ha="center", va="bottom", fontsize=7
            )
        axes.set_xticks(range(len(servers)), [_label(s) for s in servers], rotation=30, ha="right")
        axes.set_title(SCENARIO_TITLES.get(scenario, scenario).split(" (")[0])
        axes.set_ylabel("ms (point: p50, bar: p99)")
        figures = [_number(per[n], k) for n in servers for k in ("p50_us", "p99_us")]
        _log_scale(axes, [None if us is None else us / 1000 for us in figures])
        axes.grid(axis="y", which="major", alpha=0.3)
    figure.suptitle(
        "Latency at saturation (idle: connect time), p50 / p99 in ms (lower is better; log"
        f" scale)\n{_subtitle(report)}"
    )
    return figure


def _memory(report: JsonDict, summary: dict[str, dict[str, JsonDict]]) -> Figure | None:
    scenarios = [s for s in MEMORY_SCENARIOS if s in summary]
    if not scenarios:
        return None
    figure, axes_list = _figure(len(scenarios))
    for axes, scenario in zip(axes_list, scenarios, strict=True):
        per = summary[scenario]
        servers = server_order(list(per))
        kib = {name: _number(per[name], "kib_per_connection") for name in servers}
        text = {name: f"{value:.1f}" for name, value in kib.items() if value is not None}
        _bar_group(axes, per, servers, kib, gid=f"memory-{scenario}", text=text)
        connected = [_number(per[name], "connected") for name in servers]
        counts = {round(c) for c in connected if c is not None}
        clients = f" ({', '.join(f'{c:,}' for c in sorted(counts))} connections)" if counts else ""
        axes.set_title(f"{scenario}{clients}")
        axes.set_ylabel("KiB per connection")
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Memory per idle connection (lower is better)\n{_subtitle(report)}")
    return figure


def draw_charts(report: JsonDict, out_dir: Path) -> list[Path]:
    """Write the charts of ``report`` (a results file's JSON) into ``out_dir``; return
    the files written (a chart whose scenarios the report lacks is not written).

    Raises:
        ValueError: ``report`` is not a bench/run.py results file.
    """
    import matplotlib

    summary = _summary(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(RC):
        for name, make in zip(CHARTS, (_throughput, _latency, _memory), strict=True):
            figure = make(report, summary)
            if figure is None:
                continue
            path = out_dir / name
            # No date in the file: the results file says when the run was.
            figure.savefig(path, format="svg", metadata={"Date": None})
            written.append(path)
    return written


def _reexec_in_venv() -> None:
    """Without matplotlib here, run again with the bench venv's Python (if it has one)."""
    venv_python = CHARTS_VENV / "bin" / "python"
    # (Compare the prefixes: the venv's python is a symlink to this very interpreter.)
    if venv_python.exists() and Path(sys.prefix).resolve() != CHARTS_VENV.resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    raise SystemExit(
        "bench/charts.py needs matplotlib: run `bash bench/run.sh` once (it makes"
        " bench/.venv-charts), or pip install -r bench/requirements-charts.txt"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the charts of one results file into a directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python bench/charts.py RESULTS.json OUTDIR", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _reexec_in_venv()
    report = json.loads(Path(args[0]).read_text())
    if not isinstance(report, dict):
        print(f"{args[0]}: not a bench/run.py results file", file=sys.stderr)
        return 2
    try:
        written = draw_charts(report, Path(args[1]))
    except ValueError as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
