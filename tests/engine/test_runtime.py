"""``tune_gc``: the process-wide GC settings a serving process opts into."""

from __future__ import annotations

import json
import subprocess
import sys


def test_tune_gc_raises_the_thresholds_and_freezes_what_is_alive() -> None:
    # In a child process: the settings are process-wide and must not leak into the tests.
    code = (
        "import gc, json; from roomcast.engine.runtime import tune_gc, SERVER_GC_THRESHOLDS;"
        "before = gc.get_freeze_count(); tune_gc();"
        "print(json.dumps([gc.get_threshold(), list(SERVER_GC_THRESHOLDS), before,"
        " gc.get_freeze_count()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    threshold, expected, before, after = json.loads(out)
    assert threshold == expected
    assert before == 0
    assert after > 1000  # the interpreter's and roomcast's objects at start-up
