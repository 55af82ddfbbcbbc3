"""What ``tips-demo`` reports: trained-vs-random rows with a one-line reading and ``results.json`` (its pictures:
:mod:`tips_eval.demo_picture`).

The reading is computed from the numbers. Rates over a known number of queries (R@1, zero-shot top-1) get a
binomial standard error of the difference and count as a difference only beyond 2 SE, and as a gain only when
the trained rate is also 2 SE above chance (for zero-shot: the majority class's share, what a constant answer
scores); scores without a spread in the probe results (mIoU, RMSE) count as a difference only beyond a relative
margin and an absolute floor, and say that they have no error bar. Anything inside those bands reads "no clear
difference at demo scale".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELATIVE_MARGIN = 0.05  # scores without an error bar: a difference under 5 % of the random tower's value is none
RESULTS_FORMAT = 1


@dataclass(frozen=True)
class Metric:
    """One table row: where its value sits in a probe's result JSON (``task`` → ``metrics`` → ``path``).

    queries: path to the number of queries of a rate in %, which gives it a binomial standard error;
    chance: path to the number of candidates (chance = 100 / candidates %); for zero-shot the majority class's
    share of the confusion matrix instead. floor: the smallest absolute difference of a score that counts.
    """

    key: str
    label: str
    task: str
    path: tuple[str, ...]
    higher_is_better: bool
    queries: tuple[str, ...] | None = None
    chance: tuple[str, ...] | None = None
    floor: float = 0.0


METRICS: tuple[Metric, ...] = (
    Metric("text_to_image_r1", "text→image R@1 (%), synthetic captions", "retrieval", ("text_to_image", "R@1"), True,
           ("num_captions",), ("num_images",)),
    Metric("image_to_text_r1", "image→text R@1 (%), synthetic captions", "retrieval", ("image_to_text", "R@1"), True,
           ("num_images",), ("num_images",)),
    Metric("zero_shot_top1", "zero-shot main object top-1 (%)", "zero-shot", ("top1",), True,
           ("num_images",), ("confusion_matrix",)),
    Metric("object_miou", "object-class mIoU", "segmentation", ("miou_subset",), True, floor=0.01),
    Metric("object_depth_rmse", "object-pixel depth RMSE (m)", "depth", ("objects", "rmse"), False, floor=0.05),
)


def _get(metrics: dict, path: tuple[str, ...], where: str) -> Any:
    value: Any = metrics
    for k in path:
        if not isinstance(value, dict) or k not in value:
            raise KeyError(f"{where}: no metric {'.'.join(path)} (has {sorted(value) if isinstance(value, dict) else value})")
        value = value[k]
    return value


def rate_se(p_a: float, p_b: float, n: int) -> float:
    """Standard error (in % points) of the difference of two rates in % measured on ``n`` queries each."""
    a, b = p_a / 100.0, p_b / 100.0
    return 100.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(n, 1))


def reading(trained: float, random: float, higher_is_better: bool, se: float | None = None,
            chance: float | None = None, queries: int | None = None, floor: float = 0.0) -> tuple[str, str]:
    """(verdict, one-line reading): verdict is ``trained``, ``random`` or ``none`` (no clear difference).

    se: standard error of the difference of two rates in % (then ``chance`` in % and ``queries`` give the
    trained rate's own test against chance); without it a relative margin and ``floor`` apply.
    """
    gain = (trained - random) if higher_is_better else (random - trained)  # > 0: the trained model is better
    if se is not None:
        band = 2 * se
        size = f"{abs(trained - random):.1f} points vs 2 SE = {band:.1f}"
    else:
        band = max(RELATIVE_MARGIN * abs(random), floor, 1e-12)
        size = f"{100 * abs(trained - random) / max(abs(random), 1e-12):.0f} % of random's value, one seed, no error bar"
    above_chance = True
    if chance is not None and queries:
        c = chance / 100.0
        above_chance = trained - chance > 2 * 100.0 * math.sqrt(c * (1 - c) / queries)  # 2 SE of a rate at chance
    if gain > band and not above_chance:
        verdict, text = "none", f"above random but not clearly above chance ({size}): no clear gain at demo scale"
    elif gain > band:
        verdict, text = "trained", f"pretraining helps ({size})"
    elif gain < -band:
        verdict, text = "random", f"the random tower is better ({size}): pretraining did not help here at demo scale"
    else:
        verdict, text = "none", f"no clear difference at demo scale ({size})"
    if chance is not None:
        text += f"; chance {chance:.1f}"
    return verdict, text


def chance_rate(value: Any) -> float:
    """Chance in %: 100 / candidates for a count, the largest row's share for a confusion matrix (rows = truth)."""
    if isinstance(value, list):
        rows = [sum(r) for r in value]
        return 100.0 * max(rows) / max(sum(rows), 1)
    return 100.0 / int(value)


def summarise(results: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Probe result JSONs ``{"trained"|"random": {task: result}}`` → per metric key: label, trained, random,
    higher_is_better, verdict, reading."""
    rows = {}
    for m in METRICS:
        values = {}
        for label in ("trained", "random"):
            result = results[label].get(m.task)
            if result is None:
                raise KeyError(f"no {m.task} result for the {label} model")
            values[label] = float(_get(result["metrics"], m.path, f"{m.task} ({label})"))
        se = chance = n = None
        trained_metrics = results["trained"][m.task]["metrics"]
        if m.queries is not None:
            n = int(_get(trained_metrics, m.queries, m.task))
            se = rate_se(values["trained"], values["random"], n)
        if m.chance is not None:
            chance = chance_rate(_get(trained_metrics, m.chance, m.task))
        verdict, text = reading(values["trained"], values["random"], m.higher_is_better, se, chance, n, m.floor)
        rows[m.key] = {"label": m.label, "trained": values["trained"], "random": values["random"],
                       "higher_is_better": m.higher_is_better, "verdict": verdict, "reading": text}
    return rows


def markdown_table(rows: dict[str, dict]) -> str:
    lines = ["| metric (scenes probe val split) | | trained | random init | reading |", "|---|---|---|---|---|"]
    for r in rows.values():
        digits = 1 if "(%)" in r["label"] else 3
        lines.append(f"| {r['label']} | {'↑' if r['higher_is_better'] else '↓'} | {r['trained']:.{digits}f} "
                     f"| {r['random']:.{digits}f} | {r['reading']} |")
    return "\n".join(lines)


def write_results(path: Path, rows: dict[str, dict], extra: dict) -> Path:
    """``results.json``: ``{"format", "metrics": {key: {trained, random, higher_is_better, ...}}, **extra}``."""
    path.write_text(json.dumps({"format": RESULTS_FORMAT, "metrics": rows, **extra}, indent=1) + "\n")
    return path
