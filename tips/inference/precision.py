"""Reduced-precision inference: dtype names, the autocast context ``tips-extract --dtype`` uses, model preparation.

Two ways to run a model in bfloat16 (measured in ``bench/extract.py``):

- **mixed precision** (``tips-extract --dtype bfloat16``, ``with tips.autocast(model, "bfloat16"):``): weights stay
  fp32, matmuls run in bf16, LayerNorm and softmax in fp32. The fast path on CPUs with native bf16 (AVX-512 BF16,
  AMX) and on CUDA. On CPUs without it (e.g. AVX2-only) bf16 matmuls are emulated and *slower* than fp32.
- **cast weights** (``tips.load(..., dtype=torch.bfloat16)``): half the memory, everything in bf16.

int8 is :func:`tips.quantize`. :func:`prepare_for_inference` applies both the way the command-line tools do, so
``tips-extract`` and ``tips-predict`` share one code path.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.dtypes import resolve_dtype

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux /proc/cpuinfo names of the bf16 instructions


def autocast(model_or_device: nn.Module | str | torch.device, dtype: str | torch.dtype = torch.bfloat16):
    """Mixed-precision context on the model's device: ``with tips.autocast(model, "bfloat16"): model.encode_image(x)``.

    float32 gives a context that changes nothing.
    """
    dtype = resolve_dtype(dtype)
    if isinstance(model_or_device, nn.Module):
        device = next(model_or_device.parameters()).device
    else:
        device = torch.device(model_or_device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    warn_slow_path(device, dtype, None)
    return torch.autocast(device.type, dtype=dtype)


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


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX-BF16 in the ``flags`` of ``cpuinfo``).

    False where that cannot be read: the hint below is then never given.
    """
    flags = cpu_flags(cpuinfo)
    return flags is not None and any(f in flags for f in NATIVE_BF16_FLAGS)


def slow_path_warning(device: str | torch.device, dtype: str | torch.dtype | None, quantize: str | None,
                      cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """Why the requested ``dtype`` / ``quantize`` is slower than fp32 on this CPU, in one line; None when it is not
    (or when the CPU's flags cannot be read: no warning on a guess).

    - bf16 on an x86 CPU without AVX-512 BF16 / AMX: emulated, 4-9x slower than fp32 (measured on an AVX2 AMD EPYC);
    - int8 on an x86 CPU without AVX2: fbgemm's int8 kernels need AVX2 (not measured here: no such CPU at hand).
    """
    if torch.device(device).type != "cpu":
        return None
    flags = cpu_flags(cpuinfo)
    if not flags or not any(f.startswith(("sse", "avx")) for f in flags):  # unreadable, or not an x86 CPU
        return None
    if resolve_dtype(dtype) == torch.bfloat16 and quantize is None and not flags & set(NATIVE_BF16_FLAGS):
        return ("bfloat16 on this CPU (no AVX-512 BF16 / AMX) is emulated and about 4-9x slower than float32 "
                "(docs/deploy.md): use the default float32, or --quantize int8 for speed")
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


def bf16_hint(device: torch.device, dtype: str | torch.dtype | None, quantize: str | None) -> str | None:
    """A one-line hint that ``--dtype bfloat16`` is the fast path, for an fp32 CPU run on a CPU with native bf16.

    fp32 stays the default everywhere so that features do not depend on the machine that computed them.
    """
    if device.type != "cpu" or quantize is not None or resolve_dtype(dtype) not in (None, torch.float32):
        return None
    if not cpu_has_native_bf16():
        return None
    return ("hint: this CPU computes bf16 natively (AVX-512 BF16 / AMX); --dtype bfloat16 encodes about 3.6-4x "
            "faster on such CPUs at cosine 0.9999 to fp32 (docs/deploy.md)")


def print_bf16_hint(prog: str, device: torch.device, dtype: str | torch.dtype | None, quantize: str | None) -> None:
    """After an inference command on ``device``: print :func:`bf16_hint` for its ``--dtype`` / ``--quantize``."""
    hint = bf16_hint(device, dtype, quantize)
    if hint:
        print(f"{prog}: {hint}", file=sys.stderr)


def prepare_for_inference(model: nn.Module, device: str | torch.device | None = None, quantize: str | None = None) -> nn.Module:
    """Eval mode, on ``device``, and with ``quantize="int8"`` int8 linear layers (:func:`tips.quantize`)."""
    model.eval()
    if device is not None:
        model.to(device)
    if quantize is not None:
        from .quantize import quantize as quantize_model

        quantize_model(model, quantize)
    return model
