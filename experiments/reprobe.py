"""Probe the finished runs of an ablation recipe again on another probe split, without retraining.

The `small` preset probes on 256 → 64 scenes; objects cover about 9 % of their pixels, so its object metrics rest
on a few thousand pixels of 64 images. This script probes the same checkpoints, with the same protocol, resolution
and seeds (``experiments/ablation.py``'s ``probe``), on another split of the scenes generator, e.g. the `long` preset's
1,000 → 200 scenes (generated with the same seed, so a superset of the small split). It tells the evaluation's
sampling noise apart from differences between the trained towers. It does not change any recipe's verdict: that
stays with the probe split the recipe was run with.

    python -m experiments.reprobe results/ablation/small-steps1000 --data runs/ablation/long/scenes
    python -m experiments.reprobe results/ablation/small-steps600 --data runs/ablation/long/scenes --variants clip_alt two_cls random

Reads the recipe's ``results.json`` (which runs exist) and its run folders (``<workdir>/<preset>/runs<tag>/``);
writes ``<out>/<recipe>/results.json`` and ``table.md``, both the new split's numbers and the original ones. Each
run's probes go to ``<run>/probes-<split>/``; finished runs are skipped on a second call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from .ablation import (LABELS, METRICS, aggregate, comparison_table, probe, probe_split_name, say,
                      share_cores, trains_on_synthetic_captions)


def split_name(data: Path) -> str:
    """"probe1000-200": the probe split's train and val sizes, from the dataset's manifest."""
    manifest = data / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"--data {data}: no manifest.json; expected a folder written by tips-scenes")
    splits = json.loads(manifest.read_text())["splits"]
    return probe_split_name(splits["train"], splits["val"])


def run_folder(results_dir: Path, preset: str, workdir: Path, variant: str, seed: int) -> Path:
    """Where experiments/ablation.py trained a run: ``<workdir>/<preset>/runs<tag>/<variant>-seed<seed>``."""
    tag = results_dir.name[len(preset):]
    return workdir / preset / f"runs{tag}" / f"{variant}-seed{seed}"


def model_args(run: dict, folder: Path, random_variant: str) -> list[str]:
    """tips-probe's model arguments for one run: its trained checkpoint, or the random tower of the same seed."""
    if run["variant"] == "random":
        return ["--random-init", random_variant]
    final = folder / "final"
    if not (final / "model.safetensors").is_file():
        raise SystemExit(f"{run['variant']} seed {run['seed']}: no trained model at {final}; train it with "
                         f"experiments/ablation.py first")
    return ["--model", str(final)]


def summary_table(original: list[dict], reprobed: list[dict], split: str) -> str:
    """Markdown: each variant's mean ± std on the original split and on the new one."""
    lines = [f"Mean ± std over seeds; each cell is original split → {split}.", "",
             "| variant | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "|---" * (len(METRICS) + 2) + "|"]
    for variant in LABELS:
        new = [r for r in reprobed if r["variant"] == variant]
        if not new:
            continue
        seeds = sorted(r["seed"] for r in new)
        old = [r for r in original if r["variant"] == variant and r["seed"] in seeds]
        before, after = aggregate(old), aggregate(new)
        cells = [f"{before[k]['mean']:.3f} ± {before[k]['std']:.3f} → {after[k]['mean']:.3f} ± {after[k]['std']:.3f}"
                 for k, _, _ in METRICS]
        lines.append(f"| {LABELS[variant]} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a recipe's results folder written by experiments/ablation.py")
    p.add_argument("--data", type=Path, required=True, help="a tips-scenes folder whose probe/ split to probe on")
    p.add_argument("--variants", nargs="*", choices=list(LABELS), help="only these variants (default: all)")
    p.add_argument("--workdir", type=Path, default=Path("runs/ablation"), help="experiments/ablation.py's --workdir")
    p.add_argument("--out", type=Path, default=Path("results/ablation/reprobe"))
    args = p.parse_args(argv)
    source = args.results / "results.json"
    if not source.is_file():
        raise SystemExit(f"{source}: not found; expected the results folder of a experiments/ablation.py recipe")
    recipe = json.loads(source.read_text())
    split = split_name(args.data)
    share_cores(1)
    out = args.out / f"{args.results.name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    reprobed: list[dict] = json.loads(results_file.read_text())["runs"] if results_file.is_file() else []
    done = {(r["variant"], r["seed"]) for r in reprobed}
    todo = [r for r in recipe["runs"] if (args.variants is None or r["variant"] in args.variants)
            and (r["variant"], r["seed"]) not in done]
    cfg = recipe["config"]
    for run in todo:
        folder = run_folder(args.results, recipe["preset"], args.workdir, run["variant"], run["seed"])
        cls = "syn" if trains_on_synthetic_captions(run["variant"]) else "alt"
        logs = folder / f"logs-{split}"
        logs.mkdir(parents=True, exist_ok=True)
        say(f"{run['variant']} seed {run['seed']}: probing on {split} (logs {logs})")
        start = time.perf_counter()
        metrics = probe(model_args(run, folder, cfg["random_variant"]), args.data, folder / f"probes-{split}",
                        cfg, run["seed"], cls, logs)
        reprobed.append({"variant": run["variant"], "seed": run["seed"], "metrics": metrics,
                         "probe_s": time.perf_counter() - start})
        results_file.write_text(json.dumps({"source": str(source), "data": str(args.data), "split": split,
                                            "runs": reprobed}, indent=2))
        say(f"{run['variant']} seed {run['seed']}: {metrics}")
    if not reprobed:
        raise SystemExit("nothing probed: no run of the chosen variants in " + str(source))
    keep = {(r["variant"], r["seed"]) for r in reprobed}
    original = [r for r in recipe["runs"] if (r["variant"], r["seed"]) in keep]
    text = (f"Recipe `{args.results.name}` ({source}), its checkpoints probed again on `{split}` of {args.data}.\n\n"
            + summary_table(original, reprobed, split) + "\n### On the recipe's own probe split\n\n"
            + comparison_table(original) + f"\n### On `{split}`\n\n" + comparison_table(reprobed))
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
