"""``tips.quantize(model, "int8")``: int8 linear layers with dynamic (per-row, per-call) activation quantisation.

Backends (``backend=``):

- ``"fbgemm"`` (the CPU default): weights int8 per output channel, activations quantised to uint8 per call,
  int32 accumulation in PyTorch's fbgemm kernels (``torch.ops.quantized.linear_dynamic``, the kernels behind
  the deprecated ``torch.ao.quantization.quantize_dynamic``; we call the ops, not that API). On AVX2 CPUs
  torchao's int8 dynamic layers are much slower than fp32 in eager mode (docs/deploy.md), so the CPU path is
  fbgemm (``bench/extract.py --paths fp32,int8,int8-torchao`` measures both). ``reduce_range`` (7-bit activations) avoids the 16-bit saturation of
  AVX2's ``vpmaddubsw``.
- ``"torchao"``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (the maintained PyTorch quantisation
  library); the default on CUDA. Needs the ``deploy`` extra.

Only ``nn.Linear`` layers are replaced (attention q/k/v and output, MLP); patch embedding, LayerNorms, the text
tower's packed ``in_proj_weight`` and the temperatures stay fp32. A quantised model is for inference only.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..formats.optional import require
from .onednn import fold_layer_scale, foldable_layer_scale, layer_scale_sites, unpack_linears
from .slow_paths import warn_slow_path

MODES = ("int8",)
BACKENDS = ("auto", "fbgemm", "torchao")
class Int8DynamicLinear(nn.Module):
    """y = x Wᵀ + b with W stored int8 per output channel and x quantised per call (fbgemm kernels, CPU).

    x (..., in_features) float → (..., out_features) in x's dtype.
    """

    def __init__(self, linear: nn.Linear, reduce_range: bool = True, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = reduce_range
        weight = linear.weight.detach().float().cpu()
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        weight, bias = fold_layer_scale(weight, bias, None if scale is None else scale.cpu())
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8).double()  # (out,)
        with warnings.catch_warnings():  # quantised-tensor constructors warn of deprecation; fbgemm needs one here
            warnings.simplefilter("ignore", UserWarning)
            zero = torch.zeros_like(scale, dtype=torch.long)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("fbgemm int8 layers run on CPU only; quantize with backend='torchao' for CUDA")
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self._packed, self.reduce_range)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise RuntimeError(f"{prefix.rstrip('.')}: an int8-quantised model cannot be saved (its packed weights are "
                           "not a checkpoint format); save the fp32 model and quantise after loading")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm, dynamic)"


def _fold_layer_scales(model: nn.Module) -> None:
    """Quantise each image-tower block's attention output and second MLP layer with its LayerScale folded in (one
    elementwise pass less each; per-channel int8 scales absorb γ, so the int8 codes are those of the plain layer)."""
    for block in getattr(getattr(model, "vision", model), "blocks", []):
        for owner, layer_name, ls_name in layer_scale_sites(block):
            layer, ls = getattr(owner, layer_name, None), getattr(block, ls_name, None)
            if type(layer) is nn.Linear and foldable_layer_scale(ls):
                setattr(owner, layer_name, Int8DynamicLinear(layer, scale=ls.gamma))
                setattr(block, ls_name, nn.Identity())


def _swap_linears(module: nn.Module) -> int:
    """Replace every nn.Linear below ``module`` by :class:`Int8DynamicLinear`; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8DynamicLinear(child))
            count += 1
        else:
            count += _swap_linears(child)
    return count


def quantize(model: nn.Module, mode: str = "int8", backend: str = "auto") -> nn.Module:
    """Quantise ``model``'s linear layers in place for inference and return it (eval mode).

    mode: ``"int8"`` (int8 weights, dynamic int8 activations). backend: ``"auto"`` = fbgemm on CPU, torchao
    on CUDA; see the module docstring for why.
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"quantize backend must be one of {BACKENDS}, got {backend!r}")
    device = next(model.parameters()).device
    if backend == "auto":
        backend = "torchao" if device.type == "cuda" else "fbgemm"
    model.eval()
    if backend == "torchao":
        unpack_linears(model)
        ao = require("torchao.quantization", "quantize(backend='torchao')")
        ao.quantize_(model, ao.Int8DynamicActivationInt8WeightConfig())
        return model
    if device.type != "cpu":
        raise ValueError(f"backend='fbgemm' runs on CPU, but the model is on {device}: move it with .cpu() first")
    warn_slow_path("cpu", None, "int8")
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this PyTorch build has no fbgemm engine ({torch.backends.quantized.supported_engines}); "
                           "use backend='torchao'")
    torch.backends.quantized.engine = "fbgemm"
    unpack_linears(model)  # a model prepared for fp32 CPU inference: quantise its plain layers
    _fold_layer_scales(model)
    if _swap_linears(model) == 0 and not is_quantized(model):
        raise ValueError("quantize: the model has no nn.Linear layer to quantise")
    return model


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds int8 layers from :func:`quantize` (fbgemm backend)."""
    return any(isinstance(m, Int8DynamicLinear) for m in model.modules())
