"""Requests that run slower than the default on this CPU, named from its instruction-set flags: bf16 without
AVX-512 BF16 / AMX and float16 without AVX-512 FP16 / AMX-FP16 (emulated), int8 without AVX2 (fbgemm's reference
kernels). :func:`tips.autocast` and :func:`tips.quantize` warn once (:class:`SlowPathWarning`); the run goes on in
the precision asked for.

The CPU is seen as oneDNN will use it: ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) set below an instruction
set hides it, as it does from oneDNN's kernels."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from ..models.dtypes import resolve_dtype

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux /proc/cpuinfo names of the bf16 instructions
NATIVE_FP16_FLAGS = ("avx512_fp16", "amx_fp16")  # fp16 arithmetic (Sapphire Rapids, Granite Rapids)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products without 16-bit saturation
# ONEDNN_MAX_CPU_ISA values that stop below those instructions (oneDNN's names; absent, ALL or DEFAULT: no cap)
ONEDNN_CAPS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})
ONEDNN_CAPS_WITHOUT_BF16 = ONEDNN_CAPS_WITHOUT_VNNI | {"AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"}
ONEDNN_CAPS_WITHOUT_FP16 = ONEDNN_CAPS_WITHOUT_BF16 | {"AVX512_CORE_BF16"}


class SlowPathWarning(UserWarning):
    """A precision or quantisation the user asked for runs slower than the default fp32 on this CPU."""


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The instruction-set ``flags`` of ``cpuinfo``, or None where it cannot be read (other systems than Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    return frozenset(f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split())


def onednn_isa_cap() -> str | None:
    """The instruction-set cap the user gave oneDNN (``ONEDNN_MAX_CPU_ISA``, upper case), or None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.upper() if cap else None


def _usable(flags: frozenset[str], instructions: tuple[str, ...], caps_without: frozenset[str]) -> bool:
    """Whether ``flags`` hold one of ``instructions`` and ``ONEDNN_MAX_CPU_ISA`` does not cap oneDNN below them."""
    return bool(flags & set(instructions)) and onednn_isa_cap() not in caps_without


def _native_bf16(flags: frozenset[str]) -> bool:
    return _usable(flags, NATIVE_BF16_FLAGS, ONEDNN_CAPS_WITHOUT_BF16)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX-BF16 in the ``flags`` of ``cpuinfo``, not capped
    away by ``ONEDNN_MAX_CPU_ISA``).

    False where that cannot be read: the hint below is then never given.
    """
    flags = cpu_flags(cpuinfo)
    return flags is not None and _native_bf16(flags)


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has VNNI int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8 in the ``flags`` of
    ``cpuinfo``, not capped away by ``ONEDNN_MAX_CPU_ISA``); False where that cannot be read."""
    flags = cpu_flags(cpuinfo)
    return flags is not None and _usable(flags, VNNI_FLAGS, ONEDNN_CAPS_WITHOUT_VNNI)


def slow_path_warning(device: str | torch.device, dtype: str | torch.dtype | None, quantize: str | None,
                      cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """Why the requested ``dtype`` / ``quantize`` is slower than fp32 on this CPU, in one line; None when it is not
    (or when the CPU's flags cannot be read: no warning on a guess).

    - bf16 on an x86 CPU without AVX-512 BF16 / AMX: emulated, 4-9x slower than fp32 (measured on an AVX2 AMD EPYC);
    - float16 on an x86 CPU without AVX-512 FP16 / AMX-FP16: emulated, about 4x slower than fp32 (measured on a
      Zen 4 EPYC, which has bf16 but not fp16 arithmetic);
    - int8 on an x86 CPU without AVX2: fbgemm's int8 kernels need AVX2 (not measured here: no such CPU at hand).
    """
    if torch.device(device).type != "cpu":
        return None
    flags = cpu_flags(cpuinfo)
    if not flags or not any(f.startswith(("sse", "avx")) for f in flags):  # unreadable, or not an x86 CPU
        return None
    if resolve_dtype(dtype) == torch.bfloat16 and quantize is None and not _native_bf16(flags):
        why = (f"ONEDNN_MAX_CPU_ISA={onednn_isa_cap()} hides AVX-512 BF16 / AMX" if flags & set(NATIVE_BF16_FLAGS)
               else "no AVX-512 BF16 / AMX")
        return (f"bfloat16 on this CPU ({why}) is emulated and about 4-9x slower than float32 "
                "(docs/deploy.md): use the default float32, or --quantize int8 for speed")
    if (resolve_dtype(dtype) == torch.float16 and quantize is None
            and not _usable(flags, NATIVE_FP16_FLAGS, ONEDNN_CAPS_WITHOUT_FP16)):
        instead = "--dtype bfloat16" if _native_bf16(flags) else "the default float32"
        return ("float16 on this CPU (no AVX-512 FP16 / AMX-FP16) is emulated and about 4x slower than float32 "
                f"(docs/deploy.md): use {instead}, or --quantize int8 for speed")
    if quantize == "int8" and "avx2" not in flags:
        return ("int8 on this CPU (no AVX2) runs fbgemm's reference kernels, slower than float32: "
                "use the default float32")
    return None


def warn_slow_path(device: str | torch.device, dtype: str | torch.dtype | None, quantize: str | None) -> None:
    """Warn once (SlowPathWarning) when :func:`slow_path_warning` has something to say."""
    message = slow_path_warning(device, dtype, quantize)
    if message:
        _warn_once(message)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, SlowPathWarning, stacklevel=3)
