"""Imports run downward: the lower packages of the engine never import the app-facing
modules above them, not even for type checking (docs/architecture.md)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import roomcast.engine

ENGINE = pathlib.Path(roomcast.engine.__file__).resolve().parent
LOWER = ("transport", "log", "actors", "adapters")
UPPER = ("server", "namespace", "socket", "client", "cli", "testing")


def _imported(source: str, package: str) -> list[tuple[int, str]]:
    """Every module a module of ``package`` with ``source`` imports, absolute, with its
    line: at top level, in functions and in ``TYPE_CHECKING`` blocks alike."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            # ``from roomcast.engine import server`` imports a module by its name.
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def _upward(module: str) -> bool:
    """Whether importing ``module`` reaches above the lower packages."""
    if module == "roomcast.engine":  # the package's __init__ imports the server
        return True
    return any(
        module == f"roomcast.engine.{upper}" or module.startswith(f"roomcast.engine.{upper}.")
        for upper in UPPER
    )


@pytest.mark.parametrize("package", LOWER)
def test_lower_packages_import_nothing_above_them(package: str) -> None:
    paths = sorted((ENGINE / package).rglob("*.py"))
    assert paths, f"no modules under {ENGINE / package}"
    wrong = []
    for path in paths:
        dotted = ".".join(("roomcast", "engine", *path.relative_to(ENGINE).parent.parts))
        wrong += [
            f"{path.relative_to(ENGINE)}:{line} imports {module}"
            for line, module in _imported(path.read_text(), dotted)
            if _upward(module)
        ]
    assert wrong == []


@pytest.mark.parametrize(
    "source",
    [
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from roomcast.engine.socket import Socket\n",
        "def f() -> None:\n    from roomcast.engine import server\n",
        "import roomcast.engine.namespace\n",
        "from .. import cli\n",
        "from ..testing import harness\n",
        "from roomcast.engine import Server\n",
    ],
)
def test_the_check_sees_an_upward_import(source: str) -> None:
    assert any(_upward(m) for _, m in _imported(source, "roomcast.engine.log"))


def test_the_check_lets_a_lower_import_through() -> None:
    source = "from roomcast.engine.errors import EngineError\nfrom . import segment\n"
    assert not any(_upward(m) for _, m in _imported(source, "roomcast.engine.log"))
