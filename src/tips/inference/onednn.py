"""fp32 CPU inference on weights pre-packed for oneDNN: what ``tips-extract`` and the other tools run on a CPU.

PyTorch's ``nn.Linear`` on a CPU calls a BLAS GEMM that re-lays the weight out in its internal blocked format on
every call, and runs bias and GELU as separate passes over the output. :func:`pack_linears` lays each weight out
once (``torch.ops.mkldnn._reorder_linear_weight``, the pre-pack inductor's ``freezing`` uses) and calls oneDNN's
linear with the bias, and for an MLP's first layer its GELU, fused (``torch.ops.mkldnn._linear_pointwise``).
LayerScale is folded into the packed weights of the layer before it (diag(γ)·W, γ·b). Measured in
``bench/extract.py`` (``fp32`` against ``fp32-eager``); the results equal the eager model to float rounding (~1e-6).

Packing changes no parameter: each packed layer keeps its ``weight`` / ``bias`` (and LayerScale its ``gamma``) as
the same tensors under the same names, so ``state_dict``, saving, fingerprints and ``copy.deepcopy`` see the model
as it was, and the packed copy (about the size of the tower's linear weights, in addition) is made again when a
weight changes in place. Whatever the packed kernel does not cover (gradients, autocast, another dtype or device)
runs the eager computation on those parameters, so a packed model computes what the unpacked one does everywhere.

Only the image tower is packed: the text tower's attention reads its weights directly (``nn.MultiheadAttention``),
not through its layers' ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GELU_ALGORITHMS = ("none", "tanh")  # nn.GELU.approximate values oneDNN's fused GELU computes the same way


def onednn_available() -> bool:
    """Whether this PyTorch build can pack and run oneDNN fp32 linear layers on the CPU."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """y = γ ⊙ act(x Wᵀ + b) with W pre-packed for oneDNN when run in fp32 on the CPU without gradients.

    x (..., in_features) → (..., out_features). ``act``: an ``nn.GELU`` (fused into the GEMM) or None; ``scale``:
    the following LayerScale's γ (out_features,) or None (it cannot follow an activation). Holds the original
    layer's parameters, not copies.
    """

    def __init__(self, linear: nn.Linear, act: nn.GELU | None = None, scale: nn.Parameter | None = None) -> None:
        super().__init__()
        if act is not None and scale is not None:
            raise ValueError("a LayerScale folds into a layer without activation only")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._scale = (scale,)  # a tuple: γ stays registered once, in its FoldedLayerScale
        self.act = act
        self._packed: torch.Tensor | None = None
        self._packed_bias: torch.Tensor | None = None
        self._versions: tuple[int, ...] = ()
        self._pack()

    @property
    def scale(self) -> torch.Tensor | None:
        return self._scale[0]

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.weight, self.bias, self.scale) if t is not None)

    def _current_versions(self) -> tuple[int, ...]:
        # inference tensors (made under torch.inference_mode) keep no version counter: -1, never repacked
        return tuple(-1 if t.is_inference() else t._version for t in self._sources())

    def _pack(self) -> None:
        """(Re)build the packed weight from the parameters, or drop it where they are not fp32 on the CPU."""
        self._packed = self._packed_bias = None
        if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in self._sources()):
            return
        with torch.no_grad():
            weight, bias = fold_layer_scale(self.weight.detach(), None if self.bias is None else self.bias.detach(),
                                            self.scale)
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
            self._packed_bias = None if bias is None else bias.clone()
        self._versions = self._current_versions()

    def _fast(self, x: torch.Tensor) -> bool:
        """Whether this call can take the packed kernel: fp32 on the CPU, no autocast, nothing to differentiate."""
        return (self._packed is not None and x.dtype == torch.float32 and x.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast(x):
            if self._versions != self._current_versions():
                self._pack()  # a parameter changed in place since it was packed
            if self._packed is not None:
                activation = "gelu" if self.act is not None else "none"
                algorithm = self.act.approximate if self.act is not None else ""
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, self._packed_bias,
                                                          activation, [], algorithm)
        y = F.linear(x, self.weight, self.bias)
        if self.act is not None:
            y = self.act(y)
        return y * self.scale if self.scale is not None else y

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._pack()
        return self

    def __getstate__(self) -> dict:  # copy.deepcopy and pickle: the packed tensor is opaque, pack the copy again
        state = self.__dict__.copy()
        state["_packed"] = state["_packed_bias"] = None
        state["_versions"] = ()
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._pack()

    def unpacked(self) -> tuple[nn.Linear, nn.Module | None]:
        """The plain layer on the same parameters, and the activation that followed it (None if none)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear, self.act

    def extra_repr(self) -> str:
        fused = "".join(f" + {n}" for n, on in (("GELU", self.act is not None), ("LayerScale", self.scale is not None))
                        if on)
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed{fused}"


class FoldedLayerScale(nn.Module):
    """A LayerScale whose γ the preceding :class:`PackedLinear` applies: identity here; γ stays a parameter under
    its name (``ls1.gamma``) for ``state_dict``."""

    def __init__(self, layer_scale: nn.Module) -> None:
        super().__init__()
        self.gamma = layer_scale.gamma
        self._original = (layer_scale,)  # a tuple, so that it is not a second registered module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fold_layer_scale(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer (out, in) weight and (out,) bias followed by LayerScale γ (out,) as one layer:
    γ ⊙ (x Wᵀ + b) = x (diag(γ) W)ᵀ + γ ⊙ b. gamma None returns them unchanged."""
    if gamma is None:
        return weight, bias
    gamma = gamma.detach().to(weight.dtype)
    return weight * gamma[:, None], (None if bias is None else gamma * bias)


def layer_scale_sites(block: nn.Module) -> tuple[tuple[nn.Module | None, str, str], ...]:
    """(owner, layer name, LayerScale name) of a timm ViT block's two layers a LayerScale follows."""
    return ((getattr(block, "attn", None), "proj", "ls1"), (getattr(block, "mlp", None), "fc2", "ls2"))


def _is_noop(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0)


def foldable_layer_scale(layer_scale: nn.Module | None) -> bool:
    """timm's LayerScale (x * γ, not in place) folds into the layer before it."""
    return type(layer_scale).__name__ == "LayerScale" and not getattr(layer_scale, "inplace", False)


def _packable_block(block: nn.Module) -> bool:
    """A timm ViT block whose four layers are plain ``nn.Linear`` called through their forward."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    layers = [getattr(attn, "qkv", None), getattr(attn, "proj", None), getattr(mlp, "fc1", None),
              getattr(mlp, "fc2", None)]
    if not all(type(layer) is nn.Linear for layer in layers):
        return False
    return all(_is_noop(getattr(block, name, None)) or foldable_layer_scale(getattr(block, name))
               for name in ("ls1", "ls2"))


def _pack_block(block: nn.Module) -> int:
    """Pack one timm ``Block``'s attention and MLP layers, folding its LayerScales and the MLP's GELU."""
    attn, mlp = block.attn, block.mlp
    attn.qkv = PackedLinear(attn.qkv)
    for owner, layer_name, ls_name in layer_scale_sites(block):
        ls = getattr(block, ls_name, None)
        fold = foldable_layer_scale(ls)
        setattr(owner, layer_name, PackedLinear(getattr(owner, layer_name), scale=ls.gamma if fold else None))
        if fold:
            setattr(block, ls_name, FoldedLayerScale(ls))
    act = mlp.act
    fuse = (type(act) is nn.GELU and act.approximate in GELU_ALGORITHMS and _is_noop(getattr(mlp, "drop1", None))
            and _is_noop(getattr(mlp, "norm", None)))
    mlp.fc1 = PackedLinear(mlp.fc1, act=act if fuse else None)
    if fuse:
        mlp.act = nn.Identity()
    return 4


def pack_linears(model: nn.Module) -> int:
    """Pack the transformer blocks of ``model``'s image tower (a ``TIPS`` or its ``vision``) in place for fp32 CPU
    inference; returns how many linear layers were packed (0 where oneDNN is unavailable, the tower is not fp32 on
    the CPU, or it is packed already)."""
    if not onednn_available():
        return 0
    vision = getattr(model, "vision", model)
    blocks = getattr(vision, "blocks", None)
    if blocks is None or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in vision.parameters()):
        return 0
    return sum(_pack_block(block) for block in blocks if _packable_block(block))


def unpack_linears(model: nn.Module) -> int:
    """Undo :func:`pack_linears` in place (plain ``nn.Linear``, ``nn.GELU`` and LayerScale on the same parameters);
    returns how many layers were unpacked."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PackedLinear):
                linear, act = child.unpacked()
                setattr(module, name, linear)
                if act is not None and isinstance(getattr(module, "act", None), nn.Identity):
                    module.act = act
                count += 1
            elif isinstance(child, FoldedLayerScale):
                setattr(module, name, child._original[0])
    return count


def is_packed(model: nn.Module) -> bool:
    """True when ``model`` holds layers packed by :func:`pack_linears`."""
    return any(isinstance(m, PackedLinear) for m in model.modules())
