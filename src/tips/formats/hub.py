"""Official TIPS / TIPSv2 checkpoints by name: URLs, a local cache, and explicit (opt-in) downloads.

Nothing here runs unless a user asks for an official model by name. :func:`files_of` lists every file of a name
(URL, cache path, size, sha256; ``tips-download NAME --print-urls`` prints it). Offline (no network, or
``HF_HUB_OFFLINE=1`` / ``TIPS_OFFLINE=1``), the error names every missing file of the name at once with its URL
and the path to place it at; an empty, truncated or altered cache file is named with how to fetch it again.

Sizes and sha256 digests are not published with the checkpoints: a size here is an estimate from the
architecture (float32 weights), and the digest is "unknown" until a download records it beside the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.atomic import current_umask
from ..io.hashing import sha256_file

BASE_URL = "https://storage.googleapis.com/tips_data"
TOKENIZER_URL = f"{BASE_URL}/v1_0/checkpoints/tokenizer.model"


@dataclass(frozen=True)
class OfficialModel:
    name: str
    vision_url: str
    text_url: str
    tokenizer_url: str = TOKENIZER_URL


def _v1(stem: str) -> tuple[str, str]:
    root = f"{BASE_URL}/v1_0/checkpoints/pytorch/{stem}"
    return f"{root}_vision.npz", f"{root}_text.npz"


def _v2(stem: str) -> tuple[str, str]:
    root = f"{BASE_URL}/v2_0/checkpoints/pytorch/tips_v2_oss_{stem}"
    return f"{root}_vision.npz", f"{root}_text.npz"


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    name: OfficialModel(name, *urls)
    for name, urls in {
        "tips-v1-s14": _v1("tips_oss_s14_highres_distilled"),
        "tips-v1-b14": _v1("tips_oss_b14_highres_distilled"),
        "tips-v1-l14": _v1("tips_oss_l14_highres_distilled"),
        "tips-v1-so400m14": _v1("tips_oss_so400m14_highres_largetext_distilled"),
        "tips-v1-g14": _v1("tips_oss_g14_highres"),
        "tips-v1-g14-lowres": _v1("tips_oss_g14_lowres"),
        "tips-v2-b14": _v2("b14"),
        "tips-v2-l14": _v2("l14"),
        "tips-v2-so400m14": _v2("so14"),
        "tips-v2-g14": _v2("g14"),
    }.items()
}
ALIASES = {"tips-v2-so14": "tips-v2-so400m14", "tips-v1-so14": "tips-v1-so400m14"}

# Official DPT heads (Scenic zips; the heads say so400m14 where the vision files say so14).
OFFICIAL_HEADS: dict[str, str] = {
    f"tips-v2-{size}-{task}": f"{BASE_URL}/v2_0/checkpoints/scenic/tips_v2_{size}_{task}_dpt.zip"
    for size in ("b14", "l14", "so400m14", "g14")
    for task in ("segmentation", "depth", "normals")
}


def resolve_name(name: str) -> OfficialModel | None:
    """The official model called ``name`` (e.g. ``tips-v2-b14``), or None if it is not an official name."""
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    return OFFICIAL_MODELS.get(key)


def resolve_head_name(name: str) -> str | None:
    """The URL of the official DPT head called ``name`` (e.g. ``tips-v2-b14-depth``), or None."""
    key = name.lower().replace("_", "-").replace("-so14-", "-so400m14-")
    return OFFICIAL_HEADS.get(key)


def cache_dir() -> Path:
    """``$TIPS_CACHE``, else ``~/.cache/tips``: where official files are kept (by their path under ``checkpoints/``)."""
    return Path(os.environ.get("TIPS_CACHE", Path.home() / ".cache" / "tips"))


@dataclass(frozen=True)
class OfficialFile:
    """One file of an official name: its ``role`` (vision, text, tokenizer, head), URL and place in the cache.

    size: bytes, an estimate from the architecture (None when unknown); sha256: the digest a download recorded
    in the cache (None until then: the digests are not published)."""

    role: str
    url: str
    path: Path
    size: int | None
    sha256: str | None


def files_of(name: str, cache: str | os.PathLike | None = None) -> list[OfficialFile]:
    """Every file an official model or head name needs, in fetch order; an unknown name raises listing the known."""
    model, head_url = resolve_name(name), resolve_head_name(name)
    if model is None and head_url is None:
        raise KeyError(f"{name!r} is not an official name; known models: {', '.join(sorted(OFFICIAL_MODELS))}; "
                       f"heads: {', '.join(sorted(OFFICIAL_HEADS))}")
    if head_url is not None:
        return [_file("head", head_url, None, cache)]
    vision, text = _estimated_sizes(model.name)
    return [_file("vision", model.vision_url, vision, cache), _file("text", model.text_url, text, cache),
            _file("tokenizer", model.tokenizer_url, None, cache)]


def _file(role: str, url: str, size: int | None, cache: str | os.PathLike | None) -> OfficialFile:
    path = cache_path(url, cache)
    digest = path.with_name(path.name + ".sha256")
    return OfficialFile(role, url, path, size, digest.read_text().strip() if digest.is_file() else None)


def cache_path(url: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the cache keeps ``url``: its path under ``checkpoints/`` inside ``cache`` (default :func:`cache_dir`)."""
    return Path(cache if cache is not None else cache_dir()) / url.split("/checkpoints/", 1)[-1]


def _estimated_sizes(name: str) -> tuple[int, int]:
    """(vision, text) bytes of float32 weights of an official model, counted on the meta device (nothing allocated)."""
    from ..models.tips import TIPS
    from ..models.variants import get_variant

    variant = name.split("-")[2]
    overrides: dict = {"text.vocab_size": 32000}
    if name.endswith("lowres"):
        overrides["vision.pos_grid"] = 16
    with torch.device("meta"):
        model = TIPS(get_variant(variant, **overrides))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return 4 * count(model.vision), 4 * count(model.text)


def missing_files(name: str, cache: str | os.PathLike | None = None) -> list[OfficialFile]:
    """The files of ``name`` not yet in the cache."""
    return [f for f in files_of(name, cache) if not f.path.is_file()]


def require_offline_files(name: str, skip: tuple[str, ...] = ()) -> None:
    """Offline, raise one error naming every missing file of ``name`` (URL → cache path) and how to fetch them.

    skip: roles not needed this time (``("tokenizer",)`` when the caller brings its own)."""
    if not offline():
        return
    missing = [f for f in missing_files(name) if f.role not in skip]
    if missing:
        where = "; ".join(f"{f.url} -> {f.path}" for f in missing)
        raise FileNotFoundError(
            f"{name}: {len(missing)} file(s) missing from the cache {cache_dir()} and offline mode is set "
            f"(HF_HUB_OFFLINE / TIPS_OFFLINE): {where}. On a machine with network access run "
            f"`tips-download {name} --cache DIR` and copy DIR here (TIPS_CACHE=DIR), or place each file at its path.")


def download(name: str, cache: str | os.PathLike | None = None) -> list[Path]:
    """Fetch every missing file of ``name`` into the cache (checked, atomic); returns the local paths."""
    missing = missing_files(name, cache)
    if missing and offline():
        raise FileNotFoundError(f"{name}: offline mode is set (HF_HUB_OFFLINE / TIPS_OFFLINE), so the {len(missing)} "
                                f"missing file(s) cannot be fetched; unset it, or list them with "
                                f"`tips-download {name} --print-urls` and fetch them on a machine with network access")
    return [cached_file(f.url, cache, name) for f in files_of(name, cache)]


def check_cached(path: Path, name: str | None = None, url: str | None = None) -> None:
    """Refuse an empty, truncated or altered cache file, naming it and how to fetch it again."""
    why = None
    digest_file = path.with_name(path.name + ".sha256")
    if path.stat().st_size == 0:
        why = "is empty"
    elif digest_file.is_file():  # downloaded here: the recorded digest decides
        if digest_file.read_text().strip() != sha256_file(path):
            why = "does not match its recorded checksum (the sha256 written when it was downloaded)"
    elif path.suffix in (".npz", ".zip") and not zipfile.is_zipfile(path):
        why = "is truncated or not a zip archive"
    if why is not None:
        again = f"`tips-download {name}`" if name else f"fetch {url or 'it'} again"
        raise RuntimeError(f"cached file {path} {why} (an interrupted copy?); delete it and run {again}")


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("TIPS_OFFLINE", "HF_HUB_OFFLINE"))


def cached_file(url: str, cache: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """Return the local copy of ``url``, downloading it into the cache if allowed.

    A download is checked against the server's Content-Length and written atomically; its sha256 is
    stored beside it and checked on every later use, so a truncated or altered cache file is caught
    (:func:`check_cached`; ``name``, the official name, goes into its re-download advice).
    """
    target = cache_path(url, cache)
    digest_file = target.with_name(target.name + ".sha256")
    if target.is_file():
        check_cached(target, name, url)
        return target
    if offline():
        raise FileNotFoundError(_missing_message(url, target, "offline mode is set (HF_HUB_OFFLINE / TIPS_OFFLINE)"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            expected = int(response.headers.get("Content-Length", -1))
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise FileNotFoundError(_missing_message(url, target, f"download failed: {e}")) from e
    size = os.path.getsize(tmp)
    if expected >= 0 and size != expected:
        os.unlink(tmp)
        raise OSError(f"download of {url} is incomplete: {size} of {expected} bytes")
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared cache from the group
    os.replace(tmp, target)
    digest_file.write_text(sha256_file(target) + "\n")
    return target


def _missing_message(url: str, target: Path, why: str) -> str:
    return (
        f"cannot fetch {url} ({why}). Download it on a machine with network access and place it at {target} "
        f"(or set TIPS_CACHE to the folder holding it), or pass the local file path (to tips.load, or tips.load_head for a DPT head)."
    )
