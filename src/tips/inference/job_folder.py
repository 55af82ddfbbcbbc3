"""One job per extraction folder: ``manifest.json`` says which job owns the folder and whether it finished.

The manifest holds ``{"format", "version", "identity", "complete", "files"}``. It is written (atomically) when a
job claims the folder, with ``complete: false``, and again last, with ``complete: true`` and the files the job
wrote. The identity is the model's (its name, provenance and a fingerprint of its weights) and the options that
change what the files hold.

- the same job started again runs again in place and says so (``resuming an incomplete extraction``);
- a different job is refused in one line naming both identities, unless ``force``, which removes every file an
  extraction writes before it starts (nothing stale survives: no old shard, text embedding or picture);
- a folder holding extraction files but no manifest (an older release, or files of unknown origin) is refused
  the same way; :func:`check_complete` reports a folder without a complete manifest as an incomplete extraction.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import write_text_atomic

log = logging.getLogger("tips.inference")
MANIFEST = "manifest.json"
FORMAT = "tips-extraction"
VERSION = 1
# Every name an extraction writes into its folder (what force and the end of a job may remove).
OUTPUT_PATTERNS = ("features.safetensors", "features-*.safetensors", "ids.json", "ids.jsonl", "index.json",
                   "chunk-*.done.json", "img_emb/*.npy", "img_emb_syn/*.npy", "metadata/*.parquet",
                   "region_emb/*.npy", "region_metadata/*.parquet", "text_emb/*.npy", "text_metadata/*.parquet",
                   "skipped.json", "pca.png", "text_embeddings.safetensors", "texts.json")


class FolderOwnedError(RuntimeError):
    """The folder holds another job's extraction (or files of unknown origin)."""


class IncompleteExtraction(RuntimeError):
    """The folder's job has not finished: run it again to resume."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every tensor's name, shape, dtype and two sums: tells two checkpoints (or two seeds)
    apart without hashing gigabytes."""
    digest = hashlib.sha256()
    with torch.no_grad():
        sums = [(name, tuple(t.shape), str(t.dtype), t.double().sum(), t.double().abs().sum())
                for name, t in model.state_dict().items() if t.is_floating_point()]
        values = torch.stack([torch.stack([s, a]) for *_, s, a in sums]).cpu().tolist() if sums else []
    for (name, shape, dtype, *_), (s, a) in zip(sums, values):
        digest.update(f"{name}{shape}{dtype}{s:.10e}{a:.10e}".encode())
    return digest.hexdigest()[:16]


def identity_text(identity: dict[str, Any]) -> str:
    """The identity in one line, for messages."""
    model = identity.get("model", {})
    opts = ", ".join(f"{k}={v}" for k, v in identity.get("options", {}).items() if v not in (None, False, 0))
    return f"model {model.get('name')} (weights {model.get('weights')}) with {opts or 'default options'}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (or an unreadable one)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def remove_empty_output_dirs(folder: Path) -> None:
    """The sub-folders of the layout (``img_emb/`` …) that removing files left empty."""
    for sub in {pattern.split("/")[0] for pattern in OUTPUT_PATTERNS if "/" in pattern}:
        path = Path(folder) / sub
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def output_files(folder: Path) -> list[Path]:
    """Files of ``folder`` with a name an extraction writes (the manifest excluded)."""
    return sorted({p for pattern in OUTPUT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})


def claim(folder: str | Path, identity: dict[str, Any], force: bool = False) -> None:
    """Take ``folder`` for the job ``identity`` before anything is written (see the module's rules)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    existing = output_files(folder)
    if manifest is not None and manifest.get("identity") == identity:
        if not manifest.get("complete"):
            log.warning("%s: resuming an incomplete extraction of the same job", folder)
        else:
            log.warning("%s: the same job is complete there; running it again in place", folder)
    elif manifest is not None or existing:
        owner = identity_text(manifest["identity"]) if manifest else f"unknown (no {MANIFEST}; {existing[0].name} …)"
        if not force:
            raise FolderOwnedError(f"{folder} holds the extraction of another job: {owner}; this job is "
                                   f"{identity_text(identity)}. Choose another folder, or pass --force "
                                   "(ExtractOptions.force) to replace its contents")
        for path in existing:
            path.unlink()
        remove_empty_output_dirs(folder)
        log.warning("%s: --force removed %d files of the earlier job (%s)", folder, len(existing), owner)
    _write(folder, identity, complete=False, files=[])


def complete(folder: str | Path, identity: dict[str, Any], written: list[Path], **summary: Any) -> Path:
    """Remove extraction files this job did not write (an earlier layout's), then write the manifest last, with
    ``summary`` (e.g. ``rows``) beside the list of files."""
    folder = Path(folder)
    keep = {Path(p).resolve() for p in written}
    for path in output_files(folder):
        if path.resolve() not in keep:
            path.unlink()
    remove_empty_output_dirs(folder)
    files = sorted(Path(p).resolve().relative_to(folder.resolve()).as_posix() for p in written)
    return _write(folder, identity, complete=True, files=files, **summary)


def check_complete(folder: str | Path) -> None:
    """Raise :class:`IncompleteExtraction` when ``folder`` has a manifest that is not complete; a folder without
    one (an older release) is accepted when its files are there."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None and not manifest.get("complete"):
        raise IncompleteExtraction(f"{folder} is an incomplete extraction ({identity_text(manifest['identity'])}): "
                                   "run the same tips-extract again to resume it")


def _write(folder: Path, identity: dict[str, Any], complete: bool, files: list[str], **summary: Any) -> Path:
    path = folder / MANIFEST
    write_text_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, "identity": identity,
                                        "complete": complete, "files": files, **summary}, indent=1))
    return path
