"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a torn one.

Every writer of the package (checkpoints, exports, feature files, shards, manifests) goes through here:
write to a temporary name in the same folder, fsync, ``os.replace`` into place, fsync the folder; whole folders
(checkpoints) are built beside their final name and swapped in with :func:`replace_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened or synced, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where Linux has it (no window in which another thread sees a
    changed mask), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary path beside ``path``, for writers that want a file name (``safetensors.save_file``).

    What the block writes there is fsynced and renamed over ``path`` only if the block succeeds; else it is removed.
    The name is unique per writer (``mkstemp``), so two processes writing the same path never mix bytes.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes 0600 (and some writers recreate the file): the result honours the umask like any file.
        os.chmod(tmp, 0o666 & ~current_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Binary file object whose content replaces ``path`` only if the block succeeds (see :func:`atomic_path`)."""
    with atomic_path(path, suffix) as tmp, open(tmp, "wb") as f:
        yield f


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the complete folder ``tmp`` to ``final``; an existing ``final`` is set aside and deleted only after.

    The set-aside copy is named ``.<final>.old-<pid>``, so a cleanup of ``.<name>*`` leftovers also finds it.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside ``final`` to write into; swapped in whole (:func:`replace_dir`) if the block succeeds,
    removed if it raises, so ``final`` is never left half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Human-readable JSON (UTF-8, non-ASCII kept), newline-terminated."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` with one ``write`` on an ``O_APPEND`` descriptor, so that
    lines from runs that finish at the same time never interleave (POSIX appends are atomic for regular files on
    local disks), and fsync it. Raises OSError if the system wrote only part of it."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    if b"\n" in data[:-1]:
        raise ValueError(f"{path}: one line expected, got text with newlines")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as for any new file
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: wrote {written} of {len(data)} bytes of a line")
        os.fsync(fd)
    finally:
        os.close(fd)
