"""The accept loop of ``Server.serve`` (``roomcast.engine.transport.tcp``): every queued
connection is served with the peer address ``accept`` gave, a burst longer than one batch
included, and ``accept``'s errors are handled as ``trio.serve_listeners`` handles them."""

from __future__ import annotations

import errno
import logging
import socket

import pytest
import trio

from roomcast.engine.transport.tcp import accept_connections, open_tcp_sockets


class _Served:
    def __init__(self) -> None:
        self.remotes: list[str] = []
        self.changed = trio.Event()

    async def __call__(self, stream: trio.SocketStream, remote: str) -> None:
        local = stream.socket.getpeername()
        assert remote == f"{local[0]}:{local[1]}"
        self.remotes.append(remote)
        self.changed.set()
        await stream.aclose()

    async def wait_for(self, count: int) -> None:
        while len(self.remotes) < count:
            self.changed = trio.Event()
            await self.changed.wait()


async def test_a_burst_longer_than_one_batch_is_served_whole() -> None:
    (sock,) = await open_tcp_sockets(0, "127.0.0.1")
    host, port = sock.getsockname()[:2]
    clients = []
    try:
        # All queued in the kernel before the loop runs: more than one batch of 128.
        for _ in range(300):
            clients.append(await trio.open_tcp_stream(host, port))
        served = _Served()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_connections, sock, served, nursery)
                await served.wait_for(300)
                nursery.cancel_scope.cancel()
        expected = set()
        for client in clients:
            local = client.socket.getsockname()
            expected.add(f"{local[0]}:{local[1]}")
        assert set(served.remotes) == expected
    finally:
        for client in clients:
            await client.aclose()
        sock.close()


class _FlakySocket(socket.socket):
    """A listening socket whose first ``accept`` calls fail as given."""

    failures: list[int]

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, "injected")
        return super().accept()


async def _flaky_listener(failures: list[int]) -> _FlakySocket:
    (sock,) = await open_tcp_sockets(0, "127.0.0.1")
    flaky = _FlakySocket(fileno=sock.detach())
    flaky.setblocking(False)
    flaky.failures = failures
    return flaky


async def test_out_of_descriptors_is_logged_and_retried_and_an_aborted_one_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = await _flaky_listener([errno.ECONNABORTED, errno.EMFILE])
    host, port = sock.getsockname()[:2]
    served = _Served()
    try:
        client = await trio.open_tcp_stream(host, port)
        with trio.fail_after(10), caplog.at_level(logging.ERROR):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_connections, sock, served, nursery)
                await served.wait_for(1)
                nursery.cancel_scope.cancel()
        local = client.socket.getsockname()
        assert served.remotes == [f"{local[0]}:{local[1]}"]
        assert sock.failures == []
        (record,) = [r for r in caplog.records if "accept returned" in r.getMessage()]
        assert "EMFILE" in record.getMessage()
        await client.aclose()
    finally:
        sock.close()


async def test_another_accept_error_ends_the_loop() -> None:
    sock = await _flaky_listener([errno.EINVAL])
    host, port = sock.getsockname()[:2]
    try:
        client = await trio.open_tcp_stream(host, port)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError, match="injected") as info:
                    await accept_connections(sock, _Served(), nursery)
        assert info.value.errno == errno.EINVAL
        await client.aclose()
    finally:
        sock.close()
