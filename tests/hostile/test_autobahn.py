"""Autobahn|Testsuite's fuzzing client against examples/ws_echo.py (opt-in).

The suite runs on Python 2.7 (its ``wstest``); docs/hardening.md shows how to build its
environment. Set ``ROOMCAST_WSTEST`` to that ``wstest`` to run this test: cases 1-10 on
the plain echo, and 1-10 plus the permessage-deflate cases 12-13 on the echo with
``--compression``. Every case must end OK, NON-STRICT or INFORMATIONAL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WSTEST = os.environ.get("ROOMCAST_WSTEST", "")
ROOT = Path(__file__).resolve().parents[2]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
BASE_CASES = [f"{n}.*" for n in range(1, 11)]
DEFLATE_CASES = ["12.*", "13.*"]


def start_echo(*options: str) -> tuple[subprocess.Popen[str], int]:
    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "ws_echo.py"), "--port", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert echo.stdout is not None
    line = echo.stdout.readline()  # "ws_echo serving on ws://127.0.0.1:PORT"
    return echo, int(line.rsplit(":", 1)[1])


def failures(index: dict[str, dict[str, dict[str, str]]]) -> list[str]:
    """Every case of every agent that did not pass."""
    return [
        f"{agent} {case}: {result['behavior']}/{result['behaviorClose']}"
        for agent, cases in index.items()
        for case, result in cases.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING
    ]


@pytest.mark.skipif(not WSTEST, reason="set ROOMCAST_WSTEST to Autobahn's wstest to run it")
def test_autobahn_fuzzingclient_passes(tmp_path: Path) -> None:
    plain, plain_port = start_echo()
    deflate, deflate_port = start_echo("--compression")
    try:
        spec = {
            "outdir": str(tmp_path / "reports"),
            "servers": [
                {"agent": "roomcast", "url": f"ws://127.0.0.1:{plain_port}"},
                {"agent": "roomcast-deflate", "url": f"ws://127.0.0.1:{deflate_port}"},
            ],
            "cases": BASE_CASES + DEFLATE_CASES,
            "exclude-cases": [],
            "exclude-agent-cases": {"roomcast": DEFLATE_CASES},
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        subprocess.run(
            [WSTEST, "-m", "fuzzingclient", "-s", "spec.json"],
            cwd=tmp_path,
            check=True,
            timeout=3600,
            stdout=subprocess.DEVNULL,
        )
    finally:
        for echo in (plain, deflate):
            echo.terminate()
            echo.wait(timeout=10)
            if echo.stdout is not None:
                echo.stdout.close()
    index = json.loads((tmp_path / "reports" / "index.json").read_text())
    assert len(index["roomcast"]) > 300
    assert failures(index) == []
