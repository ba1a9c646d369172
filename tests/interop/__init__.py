"""Interop tests: roomcast against real third-party Socket.IO clients in subprocesses."""
