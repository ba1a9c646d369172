"""bench/run.py: the report names the machine it ran on."""

from __future__ import annotations

from types import ModuleType

from .scripts import load_script


def load_run() -> ModuleType:
    return load_script("run")


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
