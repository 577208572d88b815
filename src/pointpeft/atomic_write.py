"""Atomic file writes: every file pointpeft writes goes through here.

A file is written beside its destination (same folder, a unique temporary name), flushed and fsynced,
then renamed over the destination with :func:`os.replace`, and the folder is fsynced. A process killed at
any point leaves either the previous file, whole, or the new one, whole; never a mix or a truncated file.
At worst a stray ``.<name>.tmp-*`` file is left beside it, which readers ignore.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["atomic_open", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "fsync_directory"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk. A no-op where folders cannot be opened."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit of the ``with`` block it is
    fsynced and renamed over ``path``. On an exception the temporary file is removed and ``path`` is
    left as it was.

    Args:
        path: the destination file. Its folder must exist.
        mode: ``"wb"`` or ``"w"``.
        encoding: the text encoding for ``mode="w"`` (default UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    destination = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(destination))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=folder)
    try:
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)``, atomically (see the module docstring)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
