"""bench/run.py: the report names the machine it ran on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # (attrs and dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_the_report_names_the_cpu_and_the_versions() -> None:
    run = load_run()
    line = run.render_machine(
        {
            "cpu": "Intel(R) Xeon(R) Processor",
            "cores": 2,
            "kernel": "6.18",
            "python": "3.11.7",
            "node": "v20.20.2",
            "socket.io": "4.8.4",
            "python-socketio": "5.18.1",
        }
    )
    assert line == (
        "Machine: Intel(R) Xeon(R) Processor, 2 cores, Linux 6.18; Python 3.11.7,"
        " Node v20.20.2, socket.io 4.8.4, python-socketio 5.18.1"
    )


def test_what_could_not_be_read_is_a_question_mark() -> None:
    line = load_run().render_machine({"cpu": "?", "socket.io": None})
    assert line.startswith("Machine: ?, ? cores, Linux ?; Python ?")
    assert "socket.io ?," in line
