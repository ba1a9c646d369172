"""The transport's own parser for plain client frames behaves exactly as wsproto does.

``WebSocketTransport`` parses whole, unfragmented, masked TEXT/BINARY frames itself and
hands the first other frame, and everything after it, to wsproto. Whatever the peer
sends, split into reads however the network splits it, the messages delivered, the
close code and the control frames queued (pongs, the close answer) must be the ones a
transport that leaves every frame to wsproto produces.
"""

from __future__ import annotations

import itertools
import struct

import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection

from roomcast.engine.errors import TransportClosed
from roomcast.engine.transport.websocket import WebSocketTransport, unmask

LIMIT = 300
KEY = b"\x37\xfa\x21\x3d"


class ChunkStream(trio.abc.Stream):
    """A stream that yields the given chunks, one per ``receive_some``, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length_bytes: int = 0,
) -> bytes:
    """A client frame; ``length_bytes`` 2 or 8 forces a (maybe non-minimal) length form."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if length_bytes == 8 or n >= 65_536:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    elif length_bytes == 2 or n >= 126:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = bytes((first, mask_bit | n))
    return head + (KEY + unmask(KEY, payload) if masked else payload)


async def outcome(
    chunks: list[bytes], *, fast: bool
) -> tuple[list[str | bytes], int | None, str, list[bytes], bool]:
    transport = WebSocketTransport(
        stream=ChunkStream(list(chunks)),
        ws=Connection(ConnectionType.SERVER),
        max_message_bytes=LIMIT,
    )
    transport.fast = fast
    messages: list[str | bytes] = []
    with trio.fail_after(5):
        try:
            while True:
                messages += await transport.receive_messages()
        except TransportClosed as exc:
            return messages, exc.code, exc.reason, transport.control, transport.fast
    raise AssertionError("unreachable")  # pragma: no cover


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


text = st.text(max_size=160).map(str.encode)
binary = st.binary(max_size=320)
any_frame = st.one_of(
    # Plain frames, what the transport parses itself (most of them).
    st.builds(lambda p: frame(0x1, p), text),
    st.builds(lambda p: frame(0x2, p), binary),
    st.builds(lambda p: frame(0x1, p, length_bytes=2), text),
    # Everything wsproto must judge.
    st.builds(lambda p: frame(0x1, p), binary),  # maybe invalid UTF-8 (1007)
    st.builds(lambda p: frame(0x1, p, length_bytes=8), text),
    st.builds(lambda p, fin: frame(0x1, p, fin=fin), text, st.booleans()),
    st.builds(lambda p, fin: frame(0x0, p, fin=fin), text, st.booleans()),
    st.builds(lambda p: frame(0x9, p), st.binary(max_size=130)),
    st.builds(lambda p: frame(0xA, p), st.binary(max_size=20)),
    st.builds(lambda p: frame(0x8, p), st.binary(max_size=20)),
    st.builds(lambda code: frame(0x8, struct.pack("!H", code)), st.integers(0, 5000)),
    st.builds(lambda p, rsv: frame(0x1, p, rsv=rsv), text, st.integers(1, 7)),
    st.builds(lambda p: frame(0x1, p, masked=False), text),
    st.builds(lambda p, op: frame(op, p), text, st.sampled_from([3, 4, 7, 11, 15])),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(any_frame, min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=6))
@example([frame(0x1, b"42[1]"), frame(0x9, b"p"), frame(0x1, b"42[2]")], [3])
@example([frame(0x1, b"ok"), frame(0x1, b"\xff"), frame(0x1, b"never")], [])
@example([frame(0x1, b"x" * 200), frame(0x1, b"y" * (LIMIT + 1))], [1, 7, 150])
@example([frame(0x1, b"a" * 100, length_bytes=2)], [])
@example([frame(0x1, b""), frame(0x1, b"\xf5\x00")], [13])  # fails fast, before the frame ends
@example([frame(0x1, "é".encode() * 60)], list(range(0, 140, 3)))  # many reads
def test_the_plain_frame_parser_agrees_with_wsproto(frames: list[bytes], cuts: list[int]) -> None:
    chunks = split(b"".join(frames), cuts)
    ours = trio.run(lambda: outcome(chunks, fast=True))
    wsproto_only = trio.run(lambda: outcome(chunks, fast=False))
    assert ours[:4] == wsproto_only[:4]


async def test_plain_frames_stay_on_the_fast_path_until_another_frame_comes() -> None:
    plain = [frame(0x1, b"42[1]"), frame(0x2, b"\x00\x01"), frame(0x1, "é".encode() * 100)]
    data = b"".join(plain)
    # Split inside a header, a masking key and a payload: the parser keeps the start.
    messages, code, _, control, fast = await outcome([data[:1], data[1:9], data[9:]], fast=True)
    assert messages == ["42[1]", b"\x00\x01", "é" * 100]
    assert (code, control, fast) == (1006, [], True)
    messages, code, _, control, fast = await outcome(
        [b"".join([*plain, frame(0x9, b"hi"), frame(0x1, b"after")])], fast=True
    )
    assert messages == ["42[1]", b"\x00\x01", "é" * 100, "after"]
    assert len(control) == 1  # the pong, from wsproto
    assert (code, fast) == (1006, False)
