"""Official TIPS / TIPSv2 checkpoints by name: URLs, a local cache, and explicit (opt-in) downloads.

Nothing here runs unless a user asks for an official model by name. Offline (no network, or
``HF_HUB_OFFLINE=1`` / ``TIPS_OFFLINE=1``), a missing file raises an error that names the URL and the
path to place the file at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
    return Path(os.environ.get("TIPS_CACHE", Path.home() / ".cache" / "tips"))


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("TIPS_OFFLINE", "HF_HUB_OFFLINE"))


def cached_file(url: str) -> Path:
    """Return the local copy of ``url``, downloading it into the cache if allowed.

    A download is checked against the server's Content-Length and written atomically; its sha256 is
    stored beside it and checked on every later use, so a truncated or altered cache file is caught.
    """
    target = cache_dir() / url.split("/checkpoints/", 1)[-1]
    digest_file = target.with_name(target.name + ".sha256")
    if target.is_file():
        if digest_file.is_file() and digest_file.read_text().strip() != sha256_file(target):
            raise RuntimeError(f"cached file {target} does not match its recorded checksum; delete it and retry")
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
