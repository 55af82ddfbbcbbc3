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
import sys
from pathlib import Path

import torch
from torch import nn

from ..models.dtypes import resolve_dtype
from .slow_paths import cpu_flags, cpu_has_native_bf16, cpu_has_vnni, warn_slow_path



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


def fast_path_hint(device: torch.device, dtype: str | torch.dtype | None, quantize: str | None) -> str | None:
    """A one-line hint naming the faster paths this CPU has, for an fp32 CPU run: ``--quantize int8`` where the CPU
    has VNNI int8 dot products, ``--dtype bfloat16`` where it computes bf16 natively; None where it has neither.

    fp32 stays the default everywhere so that features do not depend on the machine that computed them.
    """
    if device.type != "cpu" or quantize is not None or resolve_dtype(dtype) not in (None, torch.float32):
        return None
    paths = []
    if cpu_has_vnni():  # measured: oneDNN int8 on a Zen 4 EPYC (bench/extract.py, docs/deploy.md)
        paths.append("--quantize int8 about 2.1-2.5x (measured on a Zen 4 EPYC; cosine 0.9995 to float32)")
    if cpu_has_native_bf16():
        flags = cpu_flags() or frozenset()
        speed = "about 3.4-4x" if "amx_bf16" in flags else "about 1.4-1.6x"  # measured: AMX Xeon; Zen 4 EPYC
        paths.append(f"--dtype bfloat16 {speed} (cosine 0.9999)")
    if not paths:
        return None
    return f"hint: this CPU has faster paths than float32: {'; '.join(paths)} (docs/deploy.md)"


def print_fast_path_hint(prog: str, device: torch.device, dtype: str | torch.dtype | None,
                         quantize: str | None) -> None:
    """After an inference command on ``device``: print :func:`fast_path_hint` for its ``--dtype`` / ``--quantize``."""
    hint = fast_path_hint(device, dtype, quantize)
    if hint:
        print(f"{prog}: {hint}", file=sys.stderr)


def prepare_for_inference(model: nn.Module, device: str | torch.device | None = None, quantize: str | None = None,
                          dtype: str | torch.dtype | None = None) -> nn.Module:
    """Eval mode, on ``device``, and ready for the precision the job runs in.

    ``quantize="int8"``: int8 linear layers (:func:`tips.quantize`). Otherwise, on the CPU in float32 (``dtype``
    None or float32), the image tower's linear layers are pre-packed for oneDNN with bias, GELU and LayerScale
    fused (:func:`tips.pack_linears`; 1.1-1.4x faster, equal to float rounding; elsewhere the layers compute as
    before). Pass the ``dtype`` the job autocasts to, so that a bf16 job does not hold a packed copy it never uses.
    """
    model.eval()
    if device is not None:
        model.to(device)
    if quantize is not None:
        from .quantize import quantize as quantize_model

        quantize_model(model, quantize)
    elif resolve_dtype(dtype) in (None, torch.float32):
        from .onednn import pack_linears

        pack_linears(model)  # packs nothing unless the tower is fp32 on the CPU
    return model
