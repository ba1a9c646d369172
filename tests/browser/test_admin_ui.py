"""The Socket.IO Admin UI's own page in a real browser: Debian's Chromium, headless, driven
by playwright-core (tests/js/admin_ui_browser.mjs), against examples/workspace_chat.py's
server with the Admin UI on (here with a login, so that the UI's login form is used).

The page and every file it loads come from this server (the npm packages in
examples/web); the UI logs in, then lists the sockets of running npm socket.io-client
clients and their rooms, and shows a client that connects while it watches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest
import trio

from examples.workspace_chat import ADMIN_PAGE_DIR, ADMIN_UI_DIR, ICON_FONT_DIR, build_server
from roomcast.engine import Socket
from roomcast.engine.admin import AdminUI
from roomcast.protocol import JsonValue
from tests.interop.app import Peer, the
from tests.processes import open_piped

BROWSER_TIMEOUT: Final = 60.0
USERNAME: Final = "ops"
PASSWORD: Final = "hunter2"
LOGIN: Final = {"username": USERNAME, "password": PASSWORD}


def test_the_admin_page_loads_files_the_package_has(web_bundle: Path) -> None:
    """The page names the package build's hashed files: each one must exist (an upgrade of
    the npm package without a matching page fails here, not in a browser)."""
    page = (ADMIN_PAGE_DIR / "index.html").read_text()
    assets = re.findall(r'(?:href|src)="((?:js|css|mdi)/[^"]+)"', page)
    assert len(assets) == 5, assets
    for asset in assets:
        kind, _, rest = asset.partition("/")
        base = ICON_FONT_DIR if kind == "mdi" else ADMIN_UI_DIR / kind
        assert (base / rest).is_file(), asset
    # The package's own page names the same scripts and styles.
    package_page = (ADMIN_UI_DIR / "index.html").read_text()
    for asset in assets:
        if not asset.startswith("mdi/"):
            assert f'"{asset}"' in package_page, asset
    assert "https://" not in page


@pytest.mark.node
async def test_admin_ui_shows_the_sockets_and_rooms_of_running_clients(
    js_peers: Path, chromium: str, web_bundle: Path, tmp_path: Path
) -> None:
    node = shutil.which("node")
    assert node is not None
    server = build_server(admin=LOGIN)
    admin = server.observer
    assert isinstance(admin, AdminUI)
    logins: list[JsonValue] = []

    @admin.namespace.on("connect")
    async def admin_connected(socket: Socket, auth: JsonValue) -> None:
        logins.append(auth)

    script = js_peers / "admin_ui_browser.mjs"
    env = {**os.environ, "CHROMIUM": chromium}
    with trio.fail_after(BROWSER_TIMEOUT):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            url = f"http://{host}:{port}"
            argv = [node, str(script), url, USERNAME, PASSWORD, str(tmp_path)]
            async with open_piped(
                lambda process: Peer(process=process), argv, stdin=subprocess.DEVNULL, env=env
            ) as peer:
                lines = await peer.finish()
            nursery.cancel_scope.cancel()
    assert the(lines, "logged_in")["serverUrl"] == url  # preset by the page
    # One login through the form, then nothing else reached the admin namespace.
    assert logins == [LOGIN]
    assert the(lines, "rooms")["problems"] == []
    for name in ("sockets", "rooms"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
