"""Analytic FLOPs of one training step, from the config alone, and the utilisation they imply.

Counted: every matrix product of the step (linears, attention scores and values, the patch-embedding
convolution, contrastive logits), 2 FLOPs per multiply-add, as ``torch.utils.flop_counter`` counts them.
A trained product costs 3× its forward (input and weight gradients), one whose input needs no gradient 2×
(the patch embedding; a frozen tower 1×); the teacher runs forward only. Gradient-checkpointing
recomputation is not counted (model FLOPs, the MFU convention). Norms, softmax and the optimiser are not
counted either: they are a few per cent at most.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.variants import TextConfig, VisionConfig
from ..models.vision import NUM_PREFIX_TOKENS
from .plan import TrainPlan

# Dense bf16 peak FLOP/s per device (no sparsity), from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
               "RTX 4090": 165.0, "V100": 125.0, "B200": 2250.0, "MI300X": 1307.0}  # fmt: skip


def peak_tflops(device_name: str) -> float | None:
    """Peak of a known device (by substring of its name, e.g. 'NVIDIA H100 80GB HBM3'), else None."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    return None


def _block(tokens: int, width: int, mlp_hidden: int, swiglu: bool = False) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``tokens`` tokens (one sequence)."""
    linears = 4 * width * width + (3 if swiglu else 2) * width * mlp_hidden
    return 2 * tokens * linears + 4 * tokens * tokens * width


def vision_forward(cfg: VisionConfig, size: int) -> tuple[float, float]:
    """(patch embedding, blocks) forward FLOPs of one ``size``² image."""
    n = (size // cfg.patch_size) ** 2
    embed = 2 * n * 3 * cfg.patch_size**2 * cfg.width
    blocks = cfg.depth * _block(n + NUM_PREFIX_TOKENS, cfg.width, cfg.mlp_hidden, cfg.ffn == "swiglu")
    return embed, blocks


def text_forward(cfg: TextConfig, length: int) -> float:
    return cfg.depth * _block(length, cfg.width, cfg.mlp_hidden)


def head_forward(width: int, hidden: int, bottleneck: int, k: int, layers: int = 3) -> float:
    """A :class:`~tips.models.heads.ProjectionHead` on one token."""
    dims = [width] + [hidden] * (layers - 1) + [bottleneck, k]
    return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per sample of one training step (student forward + backward, teacher forward), by part."""

    student_vision: float
    student_text: float
    heads: float
    teacher: float
    contrastive: float

    @property
    def per_sample(self) -> float:
        return self.student_vision + self.student_text + self.heads + self.teacher + self.contrastive


def step_flops(cfg, plan: TrainPlan, vision: VisionConfig, text: TextConfig, text_len: int | None = None,
               masked_tokens: float | None = None, global_batch: int | None = None,
               teacher_vision: VisionConfig | None = None) -> StepFlops:
    """FLOPs per sample of a step of ``cfg`` (a TrainConfig) with the model configs ``vision`` / ``text``.

    text_len: caption tokens after the collate's trim (default ``text.max_len``); masked_tokens: patches the
    iBOT head sees per image (default: the mean mask ratio × N, all N with iBOT++); global_batch: samples whose
    embeddings every rank scores against (default ``run.batch_size``); teacher_vision: a frozen teacher's tower.
    """
    views, loss = cfg.data.views, cfg.loss
    text_len = text.max_len if text_len is None else text_len
    global_batch = cfg.run.batch_size if global_batch is None else global_batch
    n_global = (views.global_size // vision.patch_size) ** 2
    if masked_tokens is None:
        ratio = cfg.data.mask.mask_ratio
        ratio = sum(ratio) / 2 if isinstance(ratio, (list, tuple)) else float(ratio)
        masked_tokens = n_global if plan.all_patches else ratio * n_global
    frozen = set(cfg.model.freeze)
    v_mult, t_mult = (1 if "vision" in frozen else 3), (1 if "text" in frozen else 3)
    embed_mult = 1 if "vision" in frozen else 2  # images need no gradient: weight gradient only

    contrastive = plan.contrastive_alt or plan.contrastive_syn
    global_views = 2 if (plan.masked_view and contrastive and loss.contrastive_view == "unmasked") else (
        1 if (plan.masked_view or contrastive) else 0)
    g_embed, g_blocks = vision_forward(vision, views.global_size)
    l_embed, l_blocks = vision_forward(vision, views.local_size)
    local = views.num_local if plan.local_crops else 0
    student_vision = (global_views * (embed_mult * g_embed + v_mult * g_blocks)
                      + local * (embed_mult * l_embed + v_mult * l_blocks))
    captions = int(plan.contrastive_alt) + int(plan.contrastive_syn)
    student_text = captions * t_mult * text_forward(text, text_len)

    dino = head_forward(vision.width, loss.head_hidden, loss.head_bottleneck, loss.dino_k)
    ibot = head_forward(vision.width, loss.head_hidden, loss.head_bottleneck, loss.ibot_k)
    heads = 3 * (local * dino if plan.dino_head else 0) + 3 * (masked_tokens * ibot if plan.ibot_head else 0)
    if plan.pixel_decoder:  # the MAE decoder's defaults (tips.models.heads.PixelDecoder)
        dec = 512
        heads += 3 * (2 * n_global * vision.width * dec + 8 * _block(n_global, dec, 4 * dec)
                      + 2 * n_global * dec * 3 * vision.patch_size**2)

    teacher = 0.0
    if plan.teacher != "none":
        tv = teacher_vision or vision
        embed, blocks = vision_forward(tv, views.global_size)
        teacher = embed + blocks
        if plan.teacher in ("ema", "head_only_ema", "frozen_heads"):
            teacher += (dino if plan.dino_head else 0) + (masked_tokens * ibot if plan.ibot_head else 0)
    if plan.feature_targets:
        tw = (teacher_vision or vision).width
        heads += 3 * 2 * vision.width * tw * (local + n_global)
    # logits against the whole batch (both directions come from one product), forward + 2 backward products
    contrastive_flops = captions * 3 * 2 * global_batch * vision.width
    return StepFlops(student_vision, student_text, heads, teacher, contrastive_flops)
