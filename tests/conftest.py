"""Shared fixtures for roomcast's test suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.processes import npm_ci_if_stale

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def js_peers() -> Path:
    """Make sure the npm packages in ``tests/js`` are installed; return that folder.

    Runs ``npm ci`` (from the committed ``package-lock.json``) when ``node_modules`` is
    missing or older than the lockfile. Fails, never skips, without ``node`` or ``npm``:
    the JavaScript cross-checks are part of the suite, not an optional extra.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required for the JS cross-checks: `node` is not on PATH")
    npm_ci_if_stale(JS_DIR)
    return JS_DIR


@pytest.fixture(autouse=True)
def _event_log_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server a test makes with the default config logs under the test's own
    temporary directory (the default is ./roomcast-log, shared by everything)."""
    from roomcast.engine import config
    from roomcast.engine.log import LogConfig

    directory = tmp_path / "roomcast-log"
    monkeypatch.setattr(config, "default_log_config", lambda: LogConfig(directory=directory))
