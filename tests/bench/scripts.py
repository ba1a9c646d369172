"""The bench's scripts, loaded as modules for their tests (``bench/`` is no package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = ["ROOT", "load_script"]

ROOT: Final = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """``bench/<name>.py``, executed afresh as module ``bench_<name>`` (registered in
    ``sys.modules``: attrs and dataclasses look their module up)."""
    module_name = f"bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
