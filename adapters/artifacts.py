"""Generated files committed with the code (descriptor sets): the write-or-`--check` step their build commands
share. Imports only the standard library, so a build runs while its artifact is missing or stale."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(
    path: Path, fresh: bytes, *, check: bool, same: Callable[[bytes, bytes], bool], command: str, note: str = ""
) -> int:
    """With `check`, exit status 0 when `path` holds what `fresh` describes (`same(old, fresh)`), else 1 with the
    command that regenerates it; without, write `fresh` to `path`."""
    if check:
        if path.exists() and same(path.read_bytes(), fresh):
            print(f"{path} is up to date")
            return 0
        print(f"{path} is out of date: run {command}", file=sys.stderr)
        return 1
    path.write_bytes(fresh)
    print(f"wrote {path} ({len(fresh)} bytes{note})")
    return 0
