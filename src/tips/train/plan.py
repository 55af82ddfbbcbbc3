"""The plan of a run: which loss terms run, on which views, against which teacher; derived once from the config.

Every part of the trainer (student heads, teacher, objective, DDP settings, logging) reads this one frozen
object instead of re-deriving "is this term on?" from the weights. :func:`make_plan` also rejects, with the
keys named, the combinations that cannot train.

Terms and their kinds:
- ``contrastive_alt`` / ``contrastive_syn``: CLS1 ↔ alt-text, CLS2 ↔ synthetic caption (on or off);
- ``distill``: ``"dino"`` (local-crop CLS1 vs the teacher's prototype targets), ``"features"`` (cosine to a
  frozen teacher's CLS1 through a linear map; released weights carry no heads) or ``"none"``;
- ``mask``: ``"ibot"`` (masked patch tokens vs teacher prototype targets), ``"pixels"`` (MAE decoder),
  ``"features"`` (cosine to a frozen teacher's patch tokens) or ``"none"``;
- ``spread``: ``"gor"`` / ``"koleo"`` on the image and / or text embeddings of the contrastive terms, or ``"none"``.
The contrastive terms may also run on nested prefixes of the embeddings (``matryoshka_dims``).
Teacher kinds: ``"none"``, ``"ema"`` (EMA tower + heads), ``"head_only_ema"`` (live student tower, EMA heads;
TIPSv2), ``"frozen_heads"`` (a checkpoint of ours with its DINO/iBOT heads), ``"frozen_features"`` (any
released tower, no heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config module validates through make_plan, so it is imported for types only
    from .config import TrainConfig

TERMS = ("contrastive_alt", "contrastive_syn", "distill", "mask", "spread")
TEACHER_KINDS = ("none", "ema", "head_only_ema", "frozen_heads", "frozen_features")


class PlanError(ValueError):
    """A configuration whose loss terms, views and teacher cannot train together; the message names the keys."""


@dataclass(frozen=True)
class TrainPlan:
    """What one training step computes (see the module docstring for the kinds)."""

    contrastive_alt: bool
    contrastive_syn: bool
    distill: str  # "none" | "dino" | "features"
    mask: str  # "none" | "ibot" | "pixels" | "features"
    teacher: str  # one of TEACHER_KINDS
    all_patches: bool  # iBOT++ (TIPSv2): the patch loss covers every patch, not only the masked ones
    weights: tuple[tuple[str, float], ...]  # (term, weight) of the terms that run, in TERMS order
    spread: str = "none"  # "none" | "gor" | "koleo"
    spread_on: tuple[str, ...] = ()  # "image", "text"
    matryoshka_dims: tuple[int, ...] = ()  # () = full width only

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the loss terms that run (and are logged), in TERMS order."""
        return tuple(name for name, _ in self.weights)

    @property
    def local_crops(self) -> bool:
        """The student encodes the local crops (only the distillation term uses them)."""
        return self.distill != "none"

    @property
    def masked_view(self) -> bool:
        """The student encodes the masked global crop (only the masked-modelling term uses it)."""
        return self.mask != "none"

    @property
    def dino_head(self) -> bool:
        return self.distill == "dino"

    @property
    def ibot_head(self) -> bool:
        return self.mask == "ibot"

    @property
    def pixel_decoder(self) -> bool:
        return self.mask == "pixels"

    @property
    def feature_targets(self) -> bool:
        """The student maps its tokens to a frozen teacher's width (feature distillation)."""
        return "features" in (self.distill, self.mask)

    @property
    def teacher_moves(self) -> bool:
        """The teacher is updated after each optimiser step (EMA of the student)."""
        return self.teacher in ("ema", "head_only_ema")

    @property
    def teacher_stats(self) -> tuple[str, ...]:
        """Terms whose targets come from prototype heads (their entropy / usage is logged)."""
        return tuple(t for t, kind in (("distill", self.distill), ("mask", self.mask)) if kind in ("dino", "ibot"))

    @property
    def has_unused_parameters(self) -> bool:
        """Some trainable parameters get no gradient (DDP must then look for unused ones)."""
        return not (self.contrastive_alt and self.contrastive_syn and self.local_crops and self.masked_view)


def heads_file(checkpoint: str | None) -> Path | None:
    """The ``model.safetensors`` of a folder checkpoint (or the file itself); None for ``.npz`` and names."""
    path = Path(checkpoint or "")
    path = path / "model.safetensors" if path.is_dir() else path
    return path if path.suffix == ".safetensors" and path.is_file() else None


def checkpoint_heads(checkpoint: str | None) -> set[str]:
    """Which of ``dino_head`` / ``ibot_head`` a frozen-teacher checkpoint carries (our exports have both)."""
    path = heads_file(checkpoint)
    if path is None:
        return set()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {name for name in ("dino_head", "ibot_head") if any(k.startswith(f"heads.{name}.") for k in f.keys())}


def _mask_ratio_is_zero(ratio) -> bool:
    return max(ratio) == 0 if isinstance(ratio, (list, tuple)) else float(ratio) == 0


def make_plan(cfg: "TrainConfig") -> TrainPlan:
    """The plan of ``cfg``; raises :class:`PlanError` naming the keys of a combination that cannot train."""
    w, loss = cfg.loss.weights, cfg.loss
    weights = {name: float(getattr(w, name)) for name in TERMS}
    negative = [f"loss.weights.{k}={v}" for k, v in weights.items() if v < 0]
    if negative:
        raise PlanError(f"{', '.join(negative)}: loss weights must be >= 0 (0 switches a term off)")
    on = {k: v > 0 for k, v in weights.items()}
    if not any(on.values()):
        raise PlanError("every loss.weights.* is 0: switch at least one of "
                        f"{', '.join('loss.weights.' + t for t in TERMS)} on")
    frozen = cfg.teacher.mode == "frozen"
    heads = checkpoint_heads(cfg.teacher.checkpoint) if frozen else set()

    distill = "none"
    if on["distill"]:
        distill = "features" if frozen and not heads else "dino"
        if cfg.data.views.num_local < 1:
            raise PlanError("loss.weights.distill > 0 needs local crops: set data.views.num_local >= 1 "
                            "(or loss.weights.distill=0)")
    mask = "none"
    if on["mask"]:
        if loss.mim_target == "pixels":
            mask = "pixels"
        else:
            mask = "features" if frozen and not heads else "ibot"
        if mask in ("pixels", "ibot") and _mask_ratio_is_zero(cfg.data.mask.mask_ratio) and not (
            mask == "ibot" and loss.ibot_plus_plus
        ):
            raise PlanError(f"loss.weights.mask > 0 with loss.mim_target={loss.mim_target} masks nothing at "
                            "data.mask.mask_ratio=0: set a ratio > 0, loss.ibot_plus_plus=true (iBOT on every "
                            "patch), or loss.weights.mask=0")
    if loss.contrastive_view == "masked" and mask == "none":
        raise PlanError("loss.contrastive_view=masked needs the masked view: set loss.weights.mask > 0 "
                        "or loss.contrastive_view=unmasked")

    spread = loss.spread if on["spread"] else "none"
    if on["spread"] and loss.spread == "none":
        raise PlanError("loss.weights.spread > 0 needs a regulariser: set loss.spread=gor or loss.spread=koleo")
    if loss.spread != "none" and not on["spread"]:
        raise PlanError(f"loss.spread={loss.spread} does nothing with loss.weights.spread=0: set a weight > 0 "
                        "(e.g. loss.weights.spread=0.1) or loss.spread=none")
    if on["spread"] and not (on["contrastive_alt"] or on["contrastive_syn"]):
        raise PlanError("loss.weights.spread > 0 spreads the contrastive embeddings: switch "
                        "loss.weights.contrastive_alt or loss.weights.contrastive_syn on")
    bad = [s for s in loss.spread_on if s not in ("image", "text")]
    if on["spread"] and (bad or not loss.spread_on):
        raise PlanError(f"loss.spread_on={list(loss.spread_on)}: expected a non-empty subset of ['image', 'text']")
    dims = tuple(int(d) for d in loss.matryoshka_dims)
    if dims and (min(dims) < 1 or len(set(dims)) != len(dims)):
        raise PlanError(f"loss.matryoshka_dims={list(dims)}: expected distinct positive widths")
    if dims and loss.matryoshka_weights is not None and len(loss.matryoshka_weights) != len(dims):
        raise PlanError(f"loss.matryoshka_weights has {len(loss.matryoshka_weights)} values for "
                        f"loss.matryoshka_dims={list(dims)}: give one per width")
    if dims and not (on["contrastive_alt"] or on["contrastive_syn"]):
        raise PlanError("loss.matryoshka_dims apply to the contrastive terms: switch one of them on")

    needs_teacher = distill in ("dino", "features") or mask in ("ibot", "features")
    if frozen:
        if not needs_teacher:
            raise PlanError("teacher.mode=frozen but no term uses a teacher: set loss.weights.distill > 0, or "
                            "loss.weights.mask > 0 with loss.mim_target=features, or teacher.mode=ema")
        missing = [h for h, used in (("dino_head", distill == "dino"), ("ibot_head", mask == "ibot"))
                   if used and h not in heads]
        if missing:
            raise PlanError(f"teacher.checkpoint={cfg.teacher.checkpoint} has no {' / '.join(missing)} but "
                            "loss.weights.distill / loss.weights.mask use them: export the teacher with its heads "
                            "or switch those terms off")
        teacher = "frozen_heads" if heads else "frozen_features"
    else:
        teacher = cfg.teacher.mode if needs_teacher else "none"

    return TrainPlan(
        contrastive_alt=on["contrastive_alt"],
        contrastive_syn=on["contrastive_syn"],
        distill=distill,
        mask=mask,
        teacher=teacher,
        all_patches=loss.ibot_plus_plus,
        weights=tuple((t, weights[t]) for t in TERMS if on[t]),
        spread=spread,
        spread_on=tuple(loss.spread_on) if spread != "none" else (),
        matryoshka_dims=dims,
    )
