"""Training schedules: pure functions of the global step (a resumed run recomputes them exactly)."""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total``); constant ``end`` afterwards."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def warmup_cosine(step: int, total: int, peak: float, final: float, warmup: int, warmup_start: float = 0.0) -> float:
    """Linear warm-up ``warmup_start → peak`` over ``warmup`` steps, then cosine ``peak → final`` until ``total``."""
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """``start → end`` linearly over ``warmup`` steps, then ``end`` (the teacher-temperature warm-up)."""
    if warmup <= 0 or step >= warmup:
        return end
    return start + (end - start) * step / warmup


def ema_momentum(step: int, total: int, base: float, final: float = 1.0) -> float:
    """EMA teacher momentum m = final − (final − base)·(1 + cos(π·step/total))/2 (DINO/DINOv2)."""
    return cosine(step, total, base, final)


def fraction_to_steps(fraction: float, total: int) -> int:
    """Warm-ups and freezes are fractions of the run so tiny runs scale them; at least one step if > 0."""
    return 0 if fraction <= 0 else max(1, round(fraction * total))
