"""Progress of long log work on a terminal, for the ``roomcast`` command.

``roomcast log verify``, ``log stats`` and ``replay`` read a whole log (a minute for 1 GiB).
When stderr is a terminal they show one line there, redrawn in place: bytes done out of the
total, the segment, the rate and the time left. stdout never gets any of it (it stays
machine-readable), and when stderr is not a terminal nothing extra is written at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TextIO

import attrs

if TYPE_CHECKING:
    from roomcast.engine.log.reader import ReadProgress

__all__ = ["TerminalProgress", "format_bytes", "terminal_progress"]

REDRAW_INTERVAL: Final = 0.2
"""Seconds between two redraws (what a reader can follow; more only costs writes)."""


def format_bytes(count: float) -> str:
    """``count`` bytes for humans, in binary units (``312.0 MiB``)."""
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def _width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns or 80  # a terminal that does not say (a fresh pty says 0)


@attrs.define(eq=False)
class TerminalProgress:
    """One status line on a terminal, redrawn in place; `close` erases it.

    Call it with each `ReadProgress` (it is an ``on_progress`` callback of the log
    readers); it redraws at most every `REDRAW_INTERVAL` seconds, and always at the end.
    """

    label: str
    stream: TextIO
    clock: Callable[[], float] = time.monotonic
    _started: float | None = None
    _last_draw: float = -1e9
    _shown: int = 0
    """Characters of the line now on the terminal (0: nothing to erase)."""

    def __call__(self, progress: ReadProgress) -> None:
        now = self.clock()
        if self._started is None:
            self._started = now
        finished = progress.segments_done == progress.segments_total
        if now - self._last_draw < REDRAW_INTERVAL and not finished:
            return
        self._last_draw = now
        self._draw(self.describe(progress, now - self._started))

    def describe(self, progress: ReadProgress, elapsed: float) -> str:
        """The status line for ``progress`` after ``elapsed`` seconds."""
        done, total = progress.bytes_done, progress.bytes_total
        parts = [f"{format_bytes(done)} of {format_bytes(total)}"]
        if total:
            parts[0] += f" ({100 * done // total}%)"
        segment = min(progress.segments_done + 1, progress.segments_total)
        parts.append(f"segment {segment} of {progress.segments_total}")
        if elapsed > 0 and done:
            rate = done / elapsed
            parts.append(f"{format_bytes(rate)}/s")
            if done < total:
                parts.append(f"{(total - done) / rate:.0f} s left")
        return f"{self.label}: {', '.join(parts)}"

    def interrupt(self) -> None:
        """Erase the line, so that another message can be written on stderr (the next
        progress redraws it)."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
            self._last_draw = -1e9

    def close(self) -> None:
        """Erase the line: the terminal is left as it was."""
        self.interrupt()

    def _draw(self, line: str) -> None:
        line = line[: max(_width(self.stream) - 1, 10)]  # a wrapped line cannot be redrawn
        pad = " " * max(self._shown - len(line), 0)
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._shown = len(line)


def terminal_progress(label: str, stream: TextIO) -> TerminalProgress | None:
    """A `TerminalProgress` on ``stream`` if it is a terminal, else None (show nothing)."""
    return TerminalProgress(label=label, stream=stream) if stream.isatty() else None
