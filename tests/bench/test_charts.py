"""bench/charts.py: the benchmark's SVG charts, drawn from a small results file built here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Final

import pytest

from .scripts import ROOT, load_script

pytest.importorskip("matplotlib")  # in the test extra; skipped only outside it

CHARTS: Final = ROOT / "bench" / "charts.py"
SVG: Final = "{http://www.w3.org/2000/svg}"


def load_charts() -> ModuleType:
    return load_script("charts")


def summary(rate: float | None, p50_us: float, p99_us: float, **more: object) -> dict[str, object]:
    return {"failed_runs": 0, "rate": rate, "p50_us": p50_us, "p99_us": p99_us, **more}


# A newer bench/run.py may hold servers this one does not know ("zeta"): they come last.
REPORT: Final = {
    "started_utc": "20261205T000000Z",
    "runs_per_scenario": 3,
    "machine": {"cpu": "a test CPU"},
    "summary": {
        "fanout": {
            "zeta": summary(5_000, 1_000, 3_000),
            "null": summary(1_229_629, 6_500, 15_900),
            "roomcast": summary(99_179, 154_000, 204_000),
            "trio-reactor": summary(150_000, 20_000, 40_000),
            "node": {"failed_runs": 1, "failures": ["loss 3"], "rate": None},
            "psio": summary(20_687, 730_000, 976_000),
        },
        "echo": {
            "psio": summary(16_006, 23_900, 43_200),
            "roomcast": summary(11_367, 33_500, 56_800),
        },
        "idle": {
            "node": summary(3_161, 26_100, 93_500, kib_per_connection=14.9, connected=10_000),
            "roomcast": summary(1_272, 69_800, 124_000, kib_per_connection=27.6, connected=10_000),
        },
        "heartbeat": {"roomcast": summary(None, 20_300, 30_300)},
    },
}


def parse(path: Path) -> tuple[dict[str, ET.Element], list[str]]:
    """The SVG's elements by id, and its texts in document order."""
    tree = ET.parse(path)
    by_id = {e.get("id", ""): e for e in tree.iter() if e.get("id")}
    texts = ["".join(e.itertext()).strip() for e in tree.iter(f"{SVG}text")]
    return by_id, texts


def bar_height(group: ET.Element) -> float:
    """The height of the bar (a closed path) in a matplotlib bar's group."""
    (path,) = group.iter(f"{SVG}path")
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path.get("d", ""))]
    points = list(zip(numbers[::2], numbers[1::2], strict=True))
    ys = [y for _, y in points]
    return max(ys) - min(ys)


def test_server_order_is_fixed_and_unknown_servers_come_last() -> None:
    charts = load_charts()
    order = charts.server_order(["zeta", "null", "alpha", "trio-task", "psio", "roomcast"])
    assert order == ["roomcast", "psio", "trio-task", "null", "alpha", "zeta"]


def test_throughput_latency_and_memory_charts(tmp_path: Path) -> None:
    charts = load_charts()
    written = charts.draw_charts(REPORT, tmp_path)
    assert [p.name for p in written] == [
        "bench-throughput.svg",
        "bench-latency.svg",
        "bench-memory.svg",
    ]

    ids, texts = parse(tmp_path / "bench-throughput.svg")
    fanout = ["roomcast", "psio", "trio-reactor", "null", "zeta"]
    for name in fanout:
        assert f"throughput-fanout-{name}" in ids
    assert "throughput-fanout-node" not in ids  # failed: no bar, a FAIL label instead
    assert "throughput-fanout-node-missing" in ids
    assert "FAIL" in texts
    assert "throughput-echo-roomcast" in ids
    assert "throughput-echo-psio" in ids
    assert not any(key.startswith("throughput-idle") for key in ids)  # not a throughput
    # The tick labels, in the fixed order (the failed server keeps its place).
    labels = [
        "roomcast",
        "Node socket.io",
        "python-socketio",
        "bare Trio, one reactor task",
        "null server (loadgen ceiling)",
        "zeta",
    ]
    at = texts.index(labels[0])
    assert texts[at : at + len(labels)] == labels
    assert {"99k", "1.23M", "21k", "5.0k", "11k", "16k"} <= set(texts)
    # Log scale: the ceiling's bar is the tallest, the smallest figure's the shortest.
    heights = {name: bar_height(ids[f"throughput-fanout-{name}"]) for name in fanout}
    assert max(heights, key=lambda n: heights[n]) == "null"
    assert min(heights, key=lambda n: heights[n]) == "zeta"

    ids, texts = parse(tmp_path / "bench-latency.svg")
    for scenario, names in (("fanout", fanout), ("echo", ["roomcast", "psio"])):
        for name in names:
            assert f"latency-{scenario}-{name}-p50" in ids
            assert f"latency-{scenario}-{name}-p99" in ids
    assert "154 / 204" in texts
    assert "33.5 / 56.8" in texts
    assert "latency-idle-roomcast-p50" in ids  # connect time
    assert not any(key.startswith("latency-heartbeat") for key in ids)

    ids, texts = parse(tmp_path / "bench-memory.svg")
    assert "memory-idle-roomcast" in ids
    assert "memory-idle-node" in ids
    assert {"27.6", "14.9"} <= set(texts)
    assert bar_height(ids["memory-idle-roomcast"]) > bar_height(ids["memory-idle-node"])
    assert "idle (10,000 connections)" in texts


def test_a_report_without_memory_scenarios_writes_no_memory_chart(tmp_path: Path) -> None:
    charts = load_charts()
    report = {"summary": {"echo": {"roomcast": summary(11_000, 30_000, 50_000)}}}
    written = charts.draw_charts(report, tmp_path)
    assert [p.name for p in written] == ["bench-throughput.svg", "bench-latency.svg"]


def test_the_command_line_redraws_from_a_results_file(tmp_path: Path) -> None:
    results = tmp_path / "bench-x.json"
    results.write_text(json.dumps(REPORT))
    out = tmp_path / "img"
    done = subprocess.run(
        [sys.executable, str(CHARTS), str(results), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "bench-latency.svg",
        "bench-memory.svg",
        "bench-throughput.svg",
    ]
    # A redraw of the same results is the same file (no date, stable ids).
    first = (out / "bench-throughput.svg").read_bytes()
    subprocess.run([sys.executable, str(CHARTS), str(results), str(out)], check=True, timeout=120)
    assert (out / "bench-throughput.svg").read_bytes() == first
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run(
        [sys.executable, str(CHARTS), str(bad), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert "not a bench/run.py results file" in done.stderr
