"""Checking the functions an app registers (handlers, listeners, middleware), on the
server and the client alike."""

from __future__ import annotations

import inspect

__all__ = ["require_async"]


def require_async(handler: object, what: str) -> None:
    """Raise unless ``handler`` is an ``async def`` function.

    Signatures are checked once, at registration, never sniffed at call time: a wrong one
    fails where it is registered, not on the first event.

    Raises:
        TypeError: It is not (``what`` names it in the message, e.g. ``"on_any"``).
    """
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{what} handler {handler!r} must be an async def function")
