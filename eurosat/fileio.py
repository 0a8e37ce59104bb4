"""Atomic file writes: every file the project saves lands complete or not at all."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Flush a finished temporary file to disk and rename it over `path`, then flush the folder.

    After a crash or power loss at any moment, `path` holds either its previous content or the
    new one: the rename is atomic, and the fsyncs order the data before it and make it durable.
    """
    path = Path(path)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Run `write(file)` on a temporary file beside `path`, then `commit` it into place.

    A failed write removes the temporary file and leaves the previous file (or none), never a
    truncated one that a reader (the Hub, the app, a resumed run) could take for a finished file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); an exclusive open keeps the umask's permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        return commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text), mode="w")
