"""Fixtures for the browser tests: Chromium and the demo page's npm bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from examples.workspace_chat import CLIENT_BUNDLE_DIR, WEB_DIR
from tests.processes import npm_ci_if_stale


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (``CHROMIUM`` overrides the path). Fails, never skips: .ci/run
    installs it with apt when it is missing."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(f"Chromium is required for the browser tests: {path} is missing")
    return path


@pytest.fixture(scope="session")
def web_bundle() -> Path:
    """The socket.io-client bundle the demo page loads, installed by ``npm ci`` in
    examples/web (from its committed lockfile) when missing or older than the lockfile."""
    npm_ci_if_stale(WEB_DIR)
    bundle = CLIENT_BUNDLE_DIR / "socket.io.min.js"
    assert bundle.is_file(), bundle
    return bundle
