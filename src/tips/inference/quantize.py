"""``tips.quantize(model, "int8")``: int8 linear layers with dynamic (per-call) activation quantisation.

Weights are int8 per output channel, activations quantised to uint8 per call, products accumulated in int32.
Backends (``backend=``):

- ``"onednn"`` (the CPU default where the CPU has VNNI int8 dot products: AVX-512 VNNI, AVX-VNNI or AMX-INT8):
  oneDNN's int8 kernels with full 8-bit activations. On a Zen 4 EPYC it is 0-20 % faster than fbgemm per layer,
  halves the quantisation error and puts the encoder ahead of ONNX Runtime's int8 graph (docs/deploy.md).
- ``"fbgemm"`` (the CPU default without VNNI): fbgemm's kernels with 7-bit activations (``reduce_range``: AVX2's
  ``vpmaddubsw`` saturates 16-bit sums; oneDNN's would too, so those CPUs keep fbgemm).
- ``"torchao"``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (the maintained PyTorch quantisation
  library); the default on CUDA. Needs the ``deploy`` extra. On AVX2 CPUs its int8 layers are much slower than
  fp32 in eager mode (docs/deploy.md; ``bench/extract.py --paths fp32,int8,int8-torchao`` measures it).

The two CPU backends call PyTorch's quantised ops (``torch.ops.quantized.linear_prepack`` / ``linear_dynamic``,
the kernels behind the deprecated ``torch.ao.quantization.quantize_dynamic``), not that API.

Only ``nn.Linear`` layers are replaced (attention q/k/v and output, MLP); patch embedding, LayerNorms, the text
tower's packed ``in_proj_weight`` and the temperatures stay fp32. A quantised model is for inference only.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..formats.optional import require
from .onednn import fold_layer_scale, foldable_layer_scale, layer_scale_sites, unpack_linears
from .slow_paths import cpu_has_vnni, warn_slow_path

MODES = ("int8",)
BACKENDS = ("auto", "onednn", "fbgemm", "torchao")
CPU_ENGINES = ("onednn", "fbgemm")


@contextlib.contextmanager
def _quantized_engine(engine: str) -> Iterator[None]:
    """PyTorch's global quantised engine set to ``engine`` for a weight's prepack, then restored (the packed weight
    keeps its engine: later calls dispatch on it, whatever the global setting)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this PyTorch build has no {engine} engine ({torch.backends.quantized.supported_engines}); "
                           "use another quantize backend")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


class Int8DynamicLinear(nn.Module):
    """y = x Wᵀ + b with W stored int8 per output channel and x quantised per call (oneDNN or fbgemm kernels, CPU).

    x (..., in_features) float → (..., out_features) in x's dtype. scale: a LayerScale γ (out_features,) folded into
    W and b. fbgemm quantises x to 7 bits (``reduce_range``: AVX2's ``vpmaddubsw`` saturates 16-bit sums), oneDNN
    to 8.
    """

    def __init__(self, linear: nn.Linear, engine: str = "fbgemm", scale: torch.Tensor | None = None) -> None:
        super().__init__()
        if engine not in CPU_ENGINES:
            raise ValueError(f"Int8DynamicLinear engine must be one of {CPU_ENGINES}, got {engine!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.engine = engine
        self.reduce_range = engine == "fbgemm"
        weight = linear.weight.detach().float().cpu()
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        weight, bias = fold_layer_scale(weight, bias, None if scale is None else scale.cpu())
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8).double()  # (out,)
        with warnings.catch_warnings():  # quantised-tensor constructors warn of deprecation; fbgemm needs one here
            warnings.simplefilter("ignore", UserWarning)
            zero = torch.zeros_like(scale, dtype=torch.long)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        with _quantized_engine(engine):
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"{self.engine} int8 layers run on CPU only; quantize with backend='torchao' for CUDA")
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self._packed, self.reduce_range)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise RuntimeError(f"{prefix.rstrip('.')}: an int8-quantised model cannot be saved (its packed weights are "
                           "not a checkpoint format); save the fp32 model and quantise after loading")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.engine}, dynamic)"


def _fold_layer_scales(model: nn.Module, engine: str) -> None:
    """Quantise each image-tower block's attention output and second MLP layer with its LayerScale folded in (one
    elementwise pass less each; per-channel int8 scales absorb γ, so the int8 codes are those of the plain layer)."""
    for block in getattr(getattr(model, "vision", model), "blocks", []):
        for owner, layer_name, ls_name in layer_scale_sites(block):
            layer, ls = getattr(owner, layer_name, None), getattr(block, ls_name, None)
            if type(layer) is nn.Linear and foldable_layer_scale(ls):
                setattr(owner, layer_name, Int8DynamicLinear(layer, engine, scale=ls.gamma))
                setattr(block, ls_name, nn.Identity())


def _swap_linears(module: nn.Module, engine: str) -> int:
    """Replace every nn.Linear below ``module`` by :class:`Int8DynamicLinear`; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8DynamicLinear(child, engine))
            count += 1
        else:
            count += _swap_linears(child, engine)
    return count


def default_cpu_engine(cpuinfo: str | Path = "/proc/cpuinfo", engines: Sequence[str] | None = None) -> str:
    """The int8 engine ``backend="auto"`` picks on this CPU: ``"onednn"`` where it has VNNI int8 dot products
    (:func:`~tips.inference.slow_paths.cpu_has_vnni`: ``cpuinfo``'s flags, ``ONEDNN_MAX_CPU_ISA``) and PyTorch has
    the engine; else ``"fbgemm"``, or ``"onednn"`` where PyTorch has no fbgemm (builds for ARM). engines: PyTorch's
    quantised engines (default: this build's)."""
    engines = torch.backends.quantized.supported_engines if engines is None else engines
    if "onednn" in engines and (cpu_has_vnni(cpuinfo) or "fbgemm" not in engines):
        return "onednn"
    return "fbgemm"


def quantize(model: nn.Module, mode: str = "int8", backend: str = "auto") -> nn.Module:
    """Quantise ``model``'s linear layers in place for inference and return it (eval mode).

    mode: ``"int8"`` (int8 weights, dynamic int8 activations). backend: ``"auto"`` = torchao on CUDA; on CPU oneDNN
    where the CPU has VNNI, else fbgemm (:func:`default_cpu_engine`); see the module docstring for why.
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"quantize backend must be one of {BACKENDS}, got {backend!r}")
    device = next(model.parameters()).device
    if backend == "auto":
        backend = "torchao" if device.type == "cuda" else default_cpu_engine()
    model.eval()
    if backend == "torchao":
        unpack_linears(model)
        ao = require("torchao.quantization", "quantize(backend='torchao')")
        ao.quantize_(model, ao.Int8DynamicActivationInt8WeightConfig())
        return model
    if device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on CPU, but the model is on {device}: move it with .cpu() first")
    warn_slow_path("cpu", None, "int8")
    unpack_linears(model)  # a model prepared for fp32 CPU inference: quantise its plain layers
    _fold_layer_scales(model, backend)
    if _swap_linears(model, backend) == 0 and not is_quantized(model):
        raise ValueError("quantize: the model has no nn.Linear layer to quantise")
    return model


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds int8 layers from :func:`quantize` (oneDNN or fbgemm backend)."""
    return any(isinstance(m, Int8DynamicLinear) for m in model.modules())
