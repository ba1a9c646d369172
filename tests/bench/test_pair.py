"""bench/pair.py: two roomcast servers measured at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .scripts import ROOT, load_script


def load_pair() -> ModuleType:
    return load_script("pair")


def result(rate: float, server_cpu: float | None = 0.5, **extra: object) -> dict[str, object]:
    cpu = {} if server_cpu is None else {"server_cpu": server_cpu}
    return {"delivered_per_s": rate, "loss": 0, "anomalies": 0, "cpu": cpu, **extra}


def test_environment_pairs_are_parsed_or_refused() -> None:
    pair = load_pair()
    assert pair.parse_env(["ROOMCAST_LOG=off", "X=a=b", "EMPTY="]) == {
        "ROOMCAST_LOG": "off",
        "X": "a=b",
        "EMPTY": "",
    }
    for bad in ("ROOMCAST_LOG", "=off"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            pair.parse_env([bad])


def test_a_result_gives_its_rate_and_cpu_time_per_operation() -> None:
    pair = load_pair()
    assert pair.per_operation(result(20_000.0, 0.5)) == (20_000.0, 25.0)
    assert pair.per_operation(result(20_000.0, None)) == (20_000.0, None)
    with pytest.raises(ValueError, match="no rate"):
        pair.per_operation({"failed": "the server exited"})
    with pytest.raises(ValueError, match="loss: 3"):
        pair.per_operation(result(20_000.0, loss=3))


def test_ratios_are_medians_over_rounds() -> None:
    pair = load_pair()
    rounds = [
        {"a_rate": 100.0, "b_rate": 110.0, "a_us": 20.0, "b_us": 18.0},
        {"a_rate": 100.0, "b_rate": 130.0, "a_us": 20.0, "b_us": 16.0},
        {"a_rate": 100.0, "b_rate": 90.0, "a_us": 20.0, "b_us": None},
    ]
    summary = pair.ratios(rounds)
    assert summary["rate_b_over_a"] == pytest.approx(1.1)
    assert summary["cpu_a_over_b"] == pytest.approx((20 / 18 + 20 / 16) / 2)
    assert pair.ratios([]) == {"rate_b_over_a": None, "cpu_a_over_b": None}


def test_a_tree_is_imported_ahead_of_this_checkout(tmp_path: Path) -> None:
    pair = load_pair()
    root = pair.import_root(ROOT, tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", "import roomcast.engine as e; print(e.__file__)"],
        env={"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == str(root / "roomcast" / "engine" / "__init__.py")
    with pytest.raises(ValueError, match="not a roomcast checkout"):
        pair.import_root(tmp_path, tmp_path)


def test_a_short_paired_run_measures_both_servers() -> None:
    """One round of echo, one second: both servers ran at once, delivered everything,
    and the report holds both rates and the ratio (no timing is asserted)."""
    before = set((ROOT / "bench" / "results").glob("pair-*"))
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "pair.py"),
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--a",
            "ROOMCAST_LOG=off",
            "--b",
            "ROOMCAST_LOG=never",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| median |" in completed.stdout
    [run_dir] = set((ROOT / "bench" / "results").glob("pair-*")) - before
    report = json.loads((run_dir / "pair.json").read_text())
    [row] = report["rounds"]
    assert row["a_rate"] > 0
    assert row["b_rate"] > 0
    assert report["median"]["rate_b_over_a"] == pytest.approx(row["b_rate"] / row["a_rate"])
    assert report["a"]["env"] == ["ROOMCAST_LOG=off"]
