"""Shard specs → shard urls: webdataset's own expansion, so every command reads a spec the way the loader does.

A spec is one url or path, or several joined by ``::``; each may hold brace patterns (``a-{000..009}.tar`` keeps
the zero padding, ``{x,y}`` lists alternatives) and ``${NAME}``, replaced by the environment variable
``WDS_NAME``. Paths that start with ``~`` are expanded; urls with a scheme (``https://``, ``pipe:``) are left to
webdataset to open.
"""

from __future__ import annotations

import os

from webdataset.shardlists import expand_urls


def is_remote(url: str) -> bool:
    """http(s), pipe: and other scheme urls are opened by webdataset and never checked up front."""
    return url.startswith("pipe:") or "://" in url


def expand_shards(spec: str | os.PathLike, check_exists: bool = False) -> list[str]:
    """Every url of ``spec``, in order (``"d/s-{0..2}.tar::e.tar"`` → four urls).

    check_exists: raise FileNotFoundError naming the missing local files (remote urls are never checked).
    """
    text = os.fspath(spec)
    urls = [u if is_remote(u) else os.path.expanduser(u) for u in expand_urls(text)]
    if check_exists:
        missing = [u for u in urls if not is_remote(u) and not os.path.isfile(u)]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards of {text!r} do not exist: {missing[:5]}{more}")
    return urls
