"""glibc malloc settings for CPU jobs whose tensors are tens of megabytes.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB by its own adaptive rule) with a fresh
``mmap`` and returns it with ``munmap`` on free, so a CPU training step that allocates and frees the same large
activations each iteration pays for faulting in and zeroing those pages again every time, in the kernel.
Serving blocks below 1 GiB from the heap and never trimming it makes the pages reusable, for somewhat more peak
memory; ``bench/allocator.py`` measures the difference (figures in docs/deploy.md). jemalloc or tcmalloc (``LD_PRELOAD``) do the
same and more. The price: memory freed by a job stays with the process until it exits, which suits batch jobs.

The command-line tools call :func:`tune_cpu_allocator` once at start. It changes nothing when the user has
already chosen (an ``LD_PRELOAD`` allocator, ``MALLOC_*_`` or ``GLIBC_TUNABLES`` settings), when
``TIPS_MALLOC=default``, or off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter codes, <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = -1  # never give the heap's top back to the system (mallopt(3): -1 disables trimming)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_tuned: bool | None = None


def user_chose_allocator(environ: os._Environ | dict[str, str] = os.environ) -> bool:
    """Whether the environment already picks an allocator or glibc malloc settings, or opts out."""
    if environ.get("TIPS_MALLOC", "") == "default":
        return True
    if any(name in environ for name in USER_SETTINGS):
        return True
    preload = environ.get("LD_PRELOAD", "")
    return any(lib in preload for lib in ("jemalloc", "tcmalloc", "mimalloc"))


def tune_cpu_allocator() -> bool:
    """Apply the settings above once per process; True when they are in effect."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if user_chose_allocator() or not _is_glibc():
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # both are C ints: larger values would wrap
        _tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # a libc without mallopt
        pass
    return _tuned


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (musl, macOS)
        return False
