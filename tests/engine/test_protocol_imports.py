"""The engine uses the protocol package through its public names only (``roomcast.protocol``
and its ``__all__``), never through its private modules (``roomcast.protocol._eio`` ...)."""

from __future__ import annotations

import ast
import pathlib

import roomcast.engine
import roomcast.protocol


def _imports(path: pathlib.Path) -> list[tuple[str, str]]:
    """Every ``(module, name)`` the file imports (``name`` is "" for ``import module``)."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            found.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, "") for alias in node.names)
    return found


def test_the_engine_imports_only_the_public_protocol_package() -> None:
    root = pathlib.Path(roomcast.engine.__file__).resolve().parent
    private: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for module, name in _imports(path):
            if module.startswith("roomcast.protocol._") or (
                module == "roomcast.protocol" and name not in roomcast.protocol.__all__
            ):
                private.append(f"{path.relative_to(root)}: {module} {name}")
    assert private == []
