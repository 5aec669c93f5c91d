"""Tools that tests drive from outside Python (kubectl, buf, compilers): found, or a plain verdict.

Under CI (`CI=true`) a missing tool fails the test: the project's own setup installs every tool
its tests use, so a missing one is a broken setup. On a developer's machine the test is skipped
and says which tool is missing and how to get it.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(tool: str, how: str) -> str:
    """The path of `tool` (a command name or a path under the repository); skip or fail without it."""
    candidate = ROOT / tool
    found = str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else shutil.which(tool)
    if found:
        return found
    missing(f"{tool} is not installed; {how}")


def missing(message: str) -> NoReturn:
    """Fail under CI, where the project's setup installs everything its tests use; else skip."""
    if under_ci():
        pytest.fail(f"{message} (CI=true: nothing may be skipped)")
    pytest.skip(message)


def require_library(name: str, how: str) -> str:
    """The shared library `name` (as in -l`name`), as the dynamic loader finds it; skip or fail
    without it."""
    found = ctypes.util.find_library(name)
    if found:
        return found
    missing(f"lib{name} is not installed; {how}")
