"""Reproducible webdataset shards: the same samples always give the same bytes, and a reader never sees half a shard.

A shard is a plain uncompressed tar, byte for byte what ``tarfile`` in PAX format writes, with every member's
metadata fixed (mtime 0, uid/gid 0, uname/gname "", mode 0o444). Samples are encoded to bytes before they are
written, so a writer knows a shard's exact final size in advance (``ShardFile.size_with``) and can cut shards at a
byte budget.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from .atomic import fsync_dir

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tar pads the archive to whole records


def encode_member(name: str, data: bytes) -> bytes:
    """One tar member (header block(s), data, zero padding) with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + b"\0" * (-len(data) % BLOCK)


def encode_sample(key: str, members: Iterable[tuple[str, bytes]]) -> bytes:
    """A webdataset sample: members ``key.ext`` in the order given."""
    return b"".join(encode_member(f"{key}.{ext}", data) for ext, data in members)


def archive_size(payload: int) -> int:
    """Bytes of a tar whose members take ``payload`` bytes: two end blocks, then padding to a whole record."""
    end = payload + 2 * BLOCK
    return end + (-end % RECORD)


class ShardFile:
    """A tar shard being written to ``<path>.tmp``; ``commit()`` finishes it and renames it into place atomically.

    Tracks the sample count, the exact final size and the sha256 of the bytes written. As a context manager it
    commits when the block succeeds and removes the partial file when it raises.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self.payload = 0
        self.count = 0
        self.size: int | None = None  # set by commit()
        self.sha256: str | None = None

    def size_with(self, encoded: bytes) -> int:
        """The final shard size if ``encoded`` were added now."""
        return archive_size(self.payload + len(encoded))

    def write(self, encoded: bytes) -> None:
        """Append one encoded sample (see :func:`encode_sample`)."""
        self._put(encoded)
        self.count += 1

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.payload += len(data)

    def commit(self) -> tuple[int, str]:
        """Finish the archive, fsync, rename into place; returns (bytes, sha256)."""
        size = archive_size(self.payload)
        self._put(b"\0" * (size - self.payload))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        self.size, self.sha256 = size, self._sha.hexdigest()
        return size, self.sha256

    def abort(self) -> None:
        """Drop the partial shard."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, bytes | str]]) -> ShardFile:
    """Write webdataset samples (dicts of ``__key__`` and ``ext -> bytes``) to one shard; members sorted by ext.

    Returns the committed :class:`ShardFile` (``count``, ``size``, ``sha256``).
    """
    with ShardFile(path) as shard:
        for sample in samples:
            members = sorted((ext, _as_bytes(v)) for ext, v in sample.items() if not ext.startswith("__"))
            shard.write(encode_sample(str(sample["__key__"]), members))
    return shard


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)
