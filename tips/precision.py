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

import argparse
import contextlib

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``torch.bfloat16`` → ``torch.bfloat16``; None stays None; unknown names raise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


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
    return torch.autocast(device.type, dtype=dtype)


def add_inference_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dtype`` and ``--quantize``, the same flags in every command that encodes (``tips-extract``, ``tips-predict``).

    Use them as ``prepare_for_inference(model, device, args.quantize)`` and ``with autocast(model, args.dtype):``.
    """
    from .quantize import MODES

    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="compute dtype (autocast; bfloat16 is faster only on CPUs with native bf16 and on CUDA)")
    parser.add_argument("--quantize", choices=MODES, help="int8 linear layers, dynamic activations (CPU: fbgemm)")


def prepare_for_inference(model: nn.Module, device: str | torch.device | None = None, quantize: str | None = None) -> nn.Module:
    """Eval mode, on ``device``, and with ``quantize="int8"`` int8 linear layers (:func:`tips.quantize`)."""
    model.eval()
    if device is not None:
        model.to(device)
    if quantize is not None:
        from .quantize import quantize as quantize_model

        quantize_model(model, quantize)
    return model
