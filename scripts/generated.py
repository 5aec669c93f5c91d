"""Write generated files, or check that the committed copies are fresh (`--check`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(outputs: Mapping[Path, Callable[[], str]], description: str, remedy: str) -> int:
    """Write each output from its maker; with --check, exit 1 naming the stale ones instead."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail when a committed file is stale")
    args = parser.parse_args()
    stale = []
    for path, make in outputs.items():
        text = make()
        if not args.check:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(ROOT)))
    if stale:
        print(f"stale: {', '.join(stale)}; run `{remedy}`", file=sys.stderr)
        return 1
    return 0
