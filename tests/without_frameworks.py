"""A pytest plugin that makes torch and TensorFlow impossible to import, as on a machine without them.

`make test` runs the service and client tiers under it (`-p without_frameworks`), which proves
that they need neither framework: the service's own logic runs on the NumPy fake backend.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

BLOCKED = ("torch", "torchvision", "tensorflow", "keras", "tf_keras", "triton")


class _Hiding(MetaPathFinder):
    """Wraps one of the interpreter's finders and finds nothing of a blocked package, so that
    `import torch` raises ModuleNotFoundError and `importlib.util.find_spec("torch")` returns
    None, exactly as where it is not installed."""

    def __init__(self, inner: MetaPathFinder) -> None:
        self.inner = inner

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in BLOCKED:
            return None
        find = getattr(self.inner, "find_spec", None)
        return None if find is None else find(fullname, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """The installed distributions (pytest's plugins are found through these), less the
        blocked ones, whose metadata a machine without them would not have either."""
        find = getattr(self.inner, "find_distributions", None)
        if find is None:
            return
        for dist in find(*args, **kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("-", "_")
            if not any(name == blocked or name.startswith(blocked + "_") for blocked in BLOCKED):
                yield dist

    def invalidate_caches(self) -> None:
        invalidate = getattr(self.inner, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


def _block() -> None:
    loaded = [name for name in sys.modules if name.split(".", 1)[0] in BLOCKED]
    if loaded:
        raise RuntimeError(f"already imported before the block: {', '.join(sorted(loaded)[:5])}")
    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]  # type: ignore[arg-type]


_block()
