"""Fixtures shared by the learner's tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def bench_script() -> Iterator[Callable[[str], ModuleType]]:
    """``bench_script("point_route_diagnosis")`` imports ``bench/point_route_diagnosis.py`` (the
    bench scripts are files, not a package), a fresh module on every call, registered in
    ``sys.modules`` under that name so its dataclasses can find their module; unregistered when
    the session ends."""
    registered: set[str] = set()

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        registered.add(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in registered:
        sys.modules.pop(name, None)
