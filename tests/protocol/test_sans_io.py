"""The protocol package stays sans-I/O: importing it loads no I/O or clock modules."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["trio", "trio_websocket", "socket", "asyncio"])
def test_protocol_never_imports_io(module: str) -> None:
    probe = f"import sys, roomcast.protocol; sys.exit({module!r} in sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_protocol_source_names_no_forbidden_module() -> None:
    import pathlib

    import roomcast.protocol

    root = pathlib.Path(roomcast.protocol.__file__).resolve().parent
    for path in root.glob("*.py"):
        text = path.read_text()
        for name in (
            "import trio",
            "import socket",
            "import time",
            "import random",
            "import secrets",
        ):
            assert name not in text, f"{path.name} has {name!r}"
