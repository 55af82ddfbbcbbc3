"""The ``long`` ablation preset on one GPU inside a wall-clock budget (a lent machine's minutes).

    python experiments/long_on_gpu.py --budget 540 --out results/ablation

1. makes the preset's scenes, as ``experiments/ablation.py`` does (a second call finds them up to date);
2. trains the first ``--jobs`` (variant, seed) runs of the preset for ``--timing-steps`` steps and probes them, all
   at once as the ablation will start them; reads each run's seconds per step off its progress bar and measures
   its start-up and probing time;
3. picks the largest step count (a multiple of 250, at most the preset's) whose training still fits the budget
   after start-up, probing and the report, and runs
   ``experiments/ablation.py --preset long --device cuda --jobs N [--steps S]``.

Every variant and seed trains the same number of steps; only that number adapts to the machine. The timing, the
chosen count and the arithmetic are printed and saved as ``timing.json`` beside the results.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import ablation

STEP_QUANTUM = 250
# A finished bar of the trainer: "pretraining: 100%|██████████| 100/100 [00:21<00:00, 4.71it/s, loss=…]".
_BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def seconds_per_step(log: str) -> float:
    """Seconds per step of a finished training log, read off its progress bar: over the last three quarters of
    the steps, so that start-up and the loader's first batches (counted in the reserve) do not weigh in; over all
    steps when the bar has too few updates for that."""
    bars = [(int(done), int(h or 0) * 3600 + int(m) * 60 + int(sec)) for done, _, h, m, sec in _BAR.findall(log)]
    if not bars:
        raise ValueError("no progress bar in the training log")
    last_done, last_s = bars[-1]
    warm = next((b for b in bars if b[0] >= last_done / 4), bars[0])
    if warm[0] < last_done and last_s > warm[1]:
        return (last_s - warm[1]) / (last_done - warm[0])
    return max(last_s, 1) / last_done


def affordable_steps(left_s: float, s_per_step: float, reserve_s: float, most: int,
                     quantum: int = STEP_QUANTUM) -> int:
    """Largest multiple of ``quantum`` (at most ``most``) whose training fits ``left_s`` minus ``reserve_s``."""
    steps = max(0, int((left_s - reserve_s) / s_per_step)) // quantum * quantum
    return min(steps, most)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=540, help="seconds for everything, this script's start included")
    p.add_argument("--report-s", type=float, default=60, help="seconds kept for FLOP counting and the report")
    p.add_argument("--timing-steps", type=int, default=100)
    p.add_argument("--margin", type=float, default=0.2,
                   help="fraction added to the measured seconds per step, start-up and probing")
    p.add_argument("--jobs", type=int, default=4, help="runs at a time (the preset's variants × seeds fit in one go)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu only to try this script")
    p.add_argument("--max-steps", type=int, help="cap below the preset's steps (to try this script)")
    p.add_argument("--out", default="results/ablation")
    p.add_argument("--workdir", default="runs/ablation")
    args = p.parse_args(argv)
    start = time.monotonic()
    preset = ablation.PRESETS["long"]
    work = Path(args.workdir) / "long"
    data = work / "scenes"
    work.mkdir(parents=True, exist_ok=True)
    ablation.make_scenes(preset, data, work / "scenes.log")

    # The first `jobs` runs, trained for a few steps and probed at once, exactly as the ablation will start them.
    first = [(v, s) for s in preset["seeds"] for v in preset["variants"]][:args.jobs]
    short = ablation.with_steps(preset, args.timing_steps)
    ablation.share_cores(args.jobs)

    def timed(variant: str, seed: int) -> dict:
        run_dir = work / "timing" / f"{variant}-seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: a timing run never resumes
        record = ablation.run_variant(short, variant, seed, data, run_dir, args.device, args.jobs)
        step_s = seconds_per_step((run_dir / "logs" / "train.log").read_text(errors="replace"))
        return {"step_s": step_s, "fixed_s": record["wall_s"] - step_s * args.timing_steps,
                "probe_s": record["probe_s"]}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        measured = dict(zip((f"{v}-seed{s}" for v, s in first), pool.map(lambda vs: timed(*vs), first)))
    grow = 1 + args.margin
    step_s = max(m["step_s"] for m in measured.values()) * grow
    reserve = (max(m["fixed_s"] for m in measured.values()) + max(m["probe_s"] for m in measured.values())) * grow
    reserve += args.report_s
    preset_steps = ablation.preset_steps(preset)
    most = min(preset_steps, args.max_steps or preset_steps)
    quantum = 1 if args.max_steps else STEP_QUANTUM
    left = args.budget - (time.monotonic() - start)
    steps = affordable_steps(left, step_s, reserve, most, quantum)
    timing = {"measured": measured, "margin": args.margin, "step_s": step_s, "reserve_s": reserve, "jobs": args.jobs,
              "timing_steps": args.timing_steps, "budget_s": args.budget, "left_s": left, "steps": steps,
              "preset_steps": preset_steps}
    print(json.dumps(timing, indent=2), flush=True)
    if steps < quantum:
        raise SystemExit(f"{left:.0f} s left cannot train {quantum} steps at {step_s:.3f} s/step after "
                         f"{reserve:.0f} s of start-up, probing and report: raise --budget")
    changed = steps != preset_steps
    ablation_args = ["--preset", "long", "--device", args.device, "--jobs", str(args.jobs), "--out", args.out,
                     "--workdir", args.workdir, *(["--steps", str(steps)] if changed else [])]
    print("running: python -m experiments.ablation " + " ".join(ablation_args), flush=True)
    code = ablation.main(ablation_args)
    results = Path(args.out) / ("long" + ablation.recipe_tag(steps if changed else None, None, []))
    (results / "timing.json").write_text(json.dumps({**timing, "total_s": time.monotonic() - start}, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
