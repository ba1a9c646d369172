"""Fixtures for the browser tests: Chromium and the demo page's npm bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from examples.workspace_chat import CLIENT_BUNDLE_DIR, WEB_DIR


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
    marker = WEB_DIR / "node_modules" / ".package-lock.json"
    lockfile = WEB_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lockfile.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is required to install examples/web: `npm` is not on PATH")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=WEB_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {WEB_DIR} failed:\n{result.stdout}\n{result.stderr}")
    bundle = CLIENT_BUNDLE_DIR / "socket.io.min.js"
    assert bundle.is_file(), bundle
    return bundle
