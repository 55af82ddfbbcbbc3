"""The one training batch type: what `tips.data` yields and `tips.train` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

_TENSOR_FIELDS = ("global_crop", "local_crops", "patch_mask", "alt_ids", "alt_padding", "syn_ids", "syn_padding",
                  "patch_index", "patch_weights")


@dataclass
class Batch:
    """B image–text samples, each with its TIPS views, mask and both captions.

    global_crop: (B, 3, H, W) uint8 as the loader collates it (channels-last memory), float32 in [0, 1] (no
        mean/std normalisation) after :meth:`for_model`, which the trainer calls; a batch built with float crops
        keeps them.
    local_crops: (B, M, 3, h, w), uint8 / float32 like ``global_crop``.
    patch_mask: (B, N) bool, True = masked, N = (H/p)·(W/p) patches of the global crop in row-major order.
    alt_ids, alt_padding: (B, L_alt) int64 / bool, the web alt-text; padding True where padded.
    syn_ids, syn_padding: (B, L_syn) int64 / bool, one synthetic caption drawn for this step (each kind trimmed
        to its own length, a multiple of 8).
    keys: the B sample keys (``__key__`` of the shard, or the table row key).
    stats: skip counts (reason → count) of the producing worker since its previous batch; the loader sums them
        into ``TrainLoader.skips`` and the trainer logs the totals.
    worker: id of the data worker that produced the batch (0 without workers); used to restore order on resume.
    patch_index, patch_weights: (T,) int64 / float32, the patches the masked-modelling loss uses (flat indices into
        B·N) and their weights (:func:`tips.losses.select_patches`); None until the trainer selects them on the
        host, where the data-dependent T costs no device sync.
    """

    global_crop: torch.Tensor
    local_crops: torch.Tensor
    patch_mask: torch.Tensor
    alt_ids: torch.Tensor
    alt_padding: torch.Tensor
    syn_ids: torch.Tensor
    syn_padding: torch.Tensor
    keys: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    worker: int = 0
    patch_index: torch.Tensor | None = None
    patch_weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _map(self, fn) -> "Batch":
        return replace(self, **{name: fn(t) for name in _TENSOR_FIELDS if (t := getattr(self, name)) is not None})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device`` (keys and stats are shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def for_model(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """What the model consumes: a copy on ``device`` with uint8 crops turned into contiguous float32 in [0, 1]
        there, so the host → device copy moves a quarter of the bytes and the host never converts."""
        moved = self.to(device, non_blocking=non_blocking)
        crops = {name: _unit_float(getattr(moved, name)) for name in ("global_crop", "local_crops")}
        return replace(moved, **crops)

    def pin_memory(self) -> "Batch":
        """A copy in pinned host memory; called by the DataLoader's pin thread when ``pin_memory=True``."""
        return self._map(lambda t: t.pin_memory())

    def __eq__(self, other: object) -> bool:
        """Same tensors (exactly), keys and worker; ``stats`` is bookkeeping and not compared."""
        if not isinstance(other, Batch):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
                return False
            if isinstance(a, torch.Tensor):
                if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
                    return False
            elif f.name != "stats" and a != b:
                return False
        return True


def _unit_float(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops → float32 in [0, 1] (contiguous); float crops unchanged."""
    if crops.dtype != torch.uint8:
        return crops
    return crops.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def trim_padding(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], multiple: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Drop the trailing columns that are padding in every row of every (ids, padding) pair, keeping a common
    length rounded up to ``multiple`` (at most the original L), so captions of one batch can be concatenated.

    ids, padding: (B, L) int64 / bool, True = padded. Real tokens never attend to padding and pooling ignores
    it, so the text tower's output is unchanged; the batch costs less and the length takes few distinct values
    (fewer recompiles under ``torch.compile``). Runs in the collate, on the host.
    """
    length = max(pairs[0][0].shape[1], 1)
    used = max((int((~pad.bool()).any(dim=0).nonzero().max()) + 1 if (~pad.bool()).any() else 1) for _, pad in pairs)
    keep = min(length, -(-used // multiple) * multiple)
    return [(ids[:, :keep], pad[:, :keep]) for ids, pad in pairs]
