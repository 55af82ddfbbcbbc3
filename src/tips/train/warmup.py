"""Continued pretraining from released weights: the head warm-up and the towers' own warm-up.

The released checkpoints carry no DINO/iBOT heads, so self-distillation starts from random prototype heads on a
trained backbone. For the first ``finetune.head_warmup_steps`` steps the towers' learning rate is 0 (every
parameter stays trainable: toggling ``requires_grad`` after DDP/FSDP wrapping breaks gradient sync, and AdamW with
lr 0 leaves a parameter bit-identical), then it ramps linearly to the schedule's over ``tower_warmup_steps``.
"""

from __future__ import annotations


def tower_lr_factor(step: int, head_warmup_steps: int, tower_warmup_steps: int) -> float:
    """Multiplier of the towers' LR at optimiser step ``step`` (0-based): 0 during the head warm-up, then a
    linear ramp (1/M, 2/M, …, 1) over ``tower_warmup_steps`` = M, then 1."""
    if step < head_warmup_steps:
        return 0.0
    if tower_warmup_steps <= 0:
        return 1.0
    return min(1.0, (step - head_warmup_steps + 1) / tower_warmup_steps)
