"""TIPS's Table-1 ablation at small scale on the embedded scenes dataset.

Variants, all at equal steps and batch from the same recipe:
  (a) clip_alt   CLIP on the noisy alt-text only (CLS1)
  (b) two_cls    two CLS tokens: CLS1 ↔ alt-text, CLS2 ↔ synthetic caption
  (c) distill    (b) + self-distillation (DINO loss on local crops vs the EMA teacher)
  (d) tips       (c) + masked image modelling (iBOT) = TIPS
  (e) random     a randomly initialised model of the same architecture (the floor)
Each trained model is probed for segmentation (all classes, object classes) and depth (all valid pixels,
object pixels), and text→image R@1 is measured on the held-out probe split's synthetic captions (CLS2 for
variants trained on synthetic captions, CLS1 for (a) and (e); both are recorded).

    python -m experiments.ablation --preset small            # 81 min on 2 CPU cores, 3 seeds, 200 steps
    python -m experiments.ablation --preset small --steps 600   # where synthetic captions start to help dense probes
    python -m experiments.ablation --preset small --steps 600 --scenes 16384   # 8× the pretraining images
    python -m experiments.ablation --preset small --probe-split 1000 200   # probes fit on 1,000 scenes, measured on 200
    python -m experiments.ablation --preset long --device cuda --jobs 4   # 4 runs share the GPU (tiny towers)
    python -m experiments.ablation --preset small --report   # table and chart of the runs finished so far

Writes ``<out>/<preset>/results.json``, ``table.md`` and ``chart.png``; every run's command is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tips.io.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "clip_alt": ["loss.weights.contrastive_syn=0", "loss.weights.distill=0", "loss.weights.mask=0"],
    "two_cls": ["loss.weights.distill=0", "loss.weights.mask=0"],
    "distill": ["loss.weights.mask=0"],
    "tips": [],
}
LABELS = {"clip_alt": "(a) CLIP alt-text", "two_cls": "(b) two CLS", "distill": "(c) + self-distillation",
          "tips": "(d) + MIM = TIPS", "random": "(e) random init"}


def trains_on_synthetic_captions(variant: str) -> bool:
    """Whether a variant's CLS2 learnt from synthetic captions (so its caption retrieval reads CLS2, not CLS1)."""
    return variant in VARIANTS and "loss.weights.contrastive_syn=0" not in VARIANTS[variant]


def short_label(variant: str) -> str:
    """"(a)" … "(e)": the variant's letter in the paper's order."""
    return LABELS[variant].split(" ")[0]


PRESETS = {
    "small": {
        "variants": ["clip_alt", "two_cls", "distill", "tips", "random"], "seeds": [0, 1, 2],
        "scenes": {"num_pretrain": 2048, "num_train": 256, "num_val": 64, "size": 128},
        "train": ["run.steps=200"], "probe_resolution": 128, "random_variant": "tiny_p8",
    },
    "long": {
        "variants": ["two_cls", "tips"], "seeds": [0, 1],
        "scenes": {"num_pretrain": 20000, "num_train": 1000, "num_val": 200, "size": 128},
        "train": ["run.steps=3000", "run.batch_size=128", "data.global_size=128", "data.local_size=48",
                  "data.num_local=6", "optim.lr=5e-4", "run.save_every=1000"],
        "workers": "auto",  # loader processes per run: the machine's cores shared among the runs at a time
        "probe_resolution": 128, "random_variant": "tiny_p8",
    },
}
METRICS = [  # (key, label, higher is better)
    ("miou_objects", "object-class mIoU", True), ("miou_all", "all-class mIoU", True),
    ("rmse_objects", "object-pixel depth RMSE (m)", False), ("rmse_all", "depth RMSE, all valid pixels (m)", False),
    ("t2i_r1", "text→image R@1 (%)", True),
]


def script(name: str) -> list[str]:
    return [str(Path(sys.executable).parent / name)]


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log} ends:\n{tail}")
    return time.perf_counter() - start


def threads_per_job(jobs: int) -> int:
    """CPU threads each of ``jobs`` concurrent runs may use. Every PyTorch process otherwise takes all cores, and
    two probes sharing 2 cores that way ran 5× slower than one alone (80 s instead of 15 s of probe training)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def share_cores(jobs: int) -> None:
    """Cap the CPU threads of every subprocess started from here on (unless the caller already set them)."""
    if jobs > 1:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads_per_job(jobs)))


def preset_steps(preset: dict) -> int:
    """Training steps of a preset (its ``run.steps=`` override)."""
    return int(next(o for o in preset["train"] if o.startswith("run.steps=")).split("=")[1])


def with_steps(preset: dict, steps: int) -> dict:
    """A copy of ``preset`` that trains ``steps`` steps."""
    return {**preset, "train": [*(o for o in preset["train"] if not o.startswith("run.steps=")), f"run.steps={steps}"]}


def loader_workers(preset: dict, jobs: int) -> list[str]:
    """The ``data.num_workers`` override of every run: the preset's, or the cores shared among ``jobs`` runs.

    Loader processes change which shard a sample comes from, not the recipe, so they are not part of the
    results folder's name.
    """
    if preset.get("workers") != "auto":
        return []
    return [f"data.num_workers={max(1, threads_per_job(jobs) - 1)}"]


def train_command(preset: dict, variant: str, seed: int, data: Path, run_dir: Path, device: str,
                  jobs: int = 1) -> list[str]:
    shards = sorted((data / "pretrain").glob("shard-*.tar"))
    pattern = str(data / "pretrain" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "bf16" if device == "cuda" else "no", "--dynamo_backend", "no"]
    if device == "cpu":
        launch += ["--cpu", "--num_cpu_threads_per_process", str(threads_per_job(jobs))]
    return launch + ["-m", "tips.cli.train", "--config", str(RECIPES / "pretrain/demo_cpu.yaml"),
                     f"data.train={pattern}", f"run.output_dir={run_dir}", f"run.seed={seed}", "run.resume=latest",
                     *(["run.mixed_precision=bf16"] if device == "cuda" else []),
                     *preset["train"], *loader_workers(preset, jobs), *VARIANTS[variant]]


def make_scenes(preset: dict, data: Path, log: Path) -> None:
    """The preset's scenes dataset in ``data`` (tips-scenes leaves an up-to-date folder alone)."""
    sc = preset["scenes"]
    run(script("tips-scenes") + ["--out", str(data), "--num-pretrain", str(sc["num_pretrain"]), "--num-train",
                                 str(sc["num_train"]), "--num-val", str(sc["num_val"]), "--resolution", str(sc["size"]),
                                 "--shard-size", str(max(1, sc["num_pretrain"] // 8))], log)


def probe(model_args: list[str], data: Path, out: Path, preset: dict, seed: int, cls: str, logs: Path) -> dict:
    """Segmentation, depth and retrieval of one model → flat metrics dict."""
    common = model_args + ["--dataset", f"scenes:{data / 'probe'}", "--resolution", str(preset["probe_resolution"]),
                           "--seed", str(seed), "--out", str(out), "--no-progress"]
    run(script("tips-probe") + ["segmentation", *common, "--object-classes"], logs / "seg.log")
    run(script("tips-probe") + ["depth", *common, "--mask", "objects"], logs / "depth.log")
    seg = json.loads(sorted(out.glob("segmentation*.json"))[-1].read_text())["metrics"]
    depth = json.loads(sorted(out.glob("depth*.json"))[-1].read_text())["metrics"]
    r1 = {}
    for which in ("alt", "syn"):
        rdir = out / f"retrieval_{which}"
        run(script("tips-probe") + ["retrieval", *model_args, "--data", str(data / "probe" / "val"),
                                    "--caption-field", "synthetic_captions", "--cls", which,
                                    "--resolution", str(preset["probe_resolution"]), "--out", str(rdir), "--no-progress"],
            logs / f"retrieval_{which}.log")
        result = json.loads(next(rdir.glob("*.json")).read_text())["metrics"]
        r1[which] = result["t2i"]["R@1"] if "t2i" in result else result["text_to_image"]["R@1"]
    return {
        "miou_objects": seg["miou_subset"], "miou_all": seg["miou"],
        "rmse_objects": depth["objects"]["rmse"], "rmse_all": depth["all"]["rmse"],
        "t2i_r1": r1[cls], "t2i_r1_cls1": r1["alt"], "t2i_r1_cls2": r1["syn"],
        # diagnostics of the depth heads, kept in results.json so they outlive the (uncommitted) probe outputs
        "rmse_objects_aligned": depth["objects"]["rmse_aligned"], "bias_objects": depth["objects"]["bias"],
        "bias_all": depth["all"]["bias"],
    }


def step_flops(preset: dict, variant: str, device: str = "cpu") -> float:
    """Forward + backward FLOPs of one training step of this variant, teacher pass included."""
    from torch.utils.flop_counter import FlopCounterMode

    from tips.models import get_variant
    from tips.train import build_modules, load_config
    from bench.train_step import make_batch  # the benchmark's synthetic batch

    cfg = load_config([RECIPES / "pretrain/demo_cpu.yaml"], ["data.train=x.tar", *preset["train"], *VARIANTS[variant]])
    module, teacher = build_modules(cfg)
    module.to(device)
    if teacher is not None:
        teacher.to(device)
    v = cfg.data.views
    batch = make_batch(cfg.run.batch_size, v.global_size, v.local_size, v.num_local,
                       get_variant(cfg.model.variant).vision.patch_size, device)
    with FlopCounterMode(display=False) as counter:
        module(batch, teacher, 0.07)["loss"].backward()
    return float(counter.get_total_flops())


def aggregate(runs: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for key, _, _ in METRICS:
        values = [r["metrics"][key] for r in runs]
        out[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values)}
    return out


# The comparisons the paper's Table 1 makes, as (baseline, candidate): does the candidate improve on the baseline?
COMPARISONS = [("clip_alt", "two_cls"), ("two_cls", "distill"), ("distill", "tips"), ("two_cls", "tips"),
               ("random", "tips")]


def paired_differences(runs: list[dict], baseline: str, candidate: str) -> dict[str, dict] | None:
    """Per-seed improvement of ``candidate`` over ``baseline`` (positive = better, whatever the metric's direction).

    Returns {metric: {"mean", "se", "n", "wins", "beats_2se"}}, or None when fewer than two seeds have both.
    """
    by_seed = {v: {r["seed"]: r["metrics"] for r in runs if r["variant"] == v} for v in (baseline, candidate)}
    seeds = sorted(set(by_seed[baseline]) & set(by_seed[candidate]))
    if len(seeds) < 2:
        return None
    out = {}
    for key, _, higher in METRICS:
        diffs = [(1 if higher else -1) * (by_seed[candidate][s][key] - by_seed[baseline][s][key]) for s in seeds]
        mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
        out[key] = {"mean": mean, "se": se, "n": len(diffs), "wins": sum(d > 0 for d in diffs),
                    "beats_2se": mean > 2 * se}
    return out


def comparison_table(runs: list[dict]) -> str:
    """Markdown: mean per-seed improvement ± standard error, seeds won, and whether it exceeds 2 SE."""
    lines = ["Per-seed improvement of the second variant over the first (positive = better; mean ± standard error "
             "over seeds, seeds won / seeds, ✓ when the mean exceeds twice its standard error).", "",
             "| comparison | " + " | ".join(label for _, label, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    rows = []
    for baseline, candidate in COMPARISONS:
        diff = paired_differences(runs, baseline, candidate)
        if diff is None:
            continue
        cells = [f"{d['mean']:+.3f} ± {d['se']:.3f} ({d['wins']}/{d['n']}){' ✓' if d['beats_2se'] else ''}"
                 for d in (diff[k] for k, _, _ in METRICS)]
        rows.append(f"| {short_label(baseline)} → {short_label(candidate)} | " + " | ".join(cells) + " |")
    if not rows:
        return "No paired comparison: no two variants share two or more seeds.\n"
    return "\n".join(lines + rows) + "\n"


def seeds_line(summary: dict) -> str:
    """"seeds 0, 1, 2" when every variant has the same seeds, else each variant's seeds."""
    seeds = {v: s["seeds"] for v, s in summary.items()}
    if len({tuple(x) for x in seeds.values()}) == 1:
        return "seeds " + ", ".join(map(str, next(iter(seeds.values()))))
    return "seeds " + "; ".join(f"{short_label(v)} {', '.join(map(str, x))}" for v, x in seeds.items())


def write_table(summary: dict, preset_name: str, preset: dict, out: Path, runs: list[dict] | None = None,
                jobs: int = 1) -> str:
    shared = f" {jobs} runs trained at a time on one device, so wall times include waiting for it." if jobs > 1 else ""
    lines = [f"Preset `{preset_name}`, {seeds_line(summary)}; mean ± std over seeds.{shared}", "",
             "| variant | " + " | ".join(label for _, label, _ in METRICS) + " | steps | wall time / run (s) | "
             "train GFLOP / run |", "|---" * (len(METRICS) + 4) + "|"]
    for variant, s in summary.items():
        cells = [f"{s['metrics'][k]['mean']:.3f} ± {s['metrics'][k]['std']:.3f}" for k, _, _ in METRICS]
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) +
                     f" | {s['steps']} | {s['wall_s']:.0f} | {s['gflop']:.0f} |")
    text = "\n".join(lines) + "\n"
    if runs:
        text += "\n" + comparison_table(runs)
    (out / "table.md").write_text(text)
    return text


def write_chart(summary: dict, out: Path, runs: list[dict] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    names = list(summary)
    for ax, (key, label, higher) in zip(axes, METRICS):
        means = [summary[v]["metrics"][key]["mean"] for v in names]
        stds = [summary[v]["metrics"][key]["std"] for v in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(names))], alpha=0.8)
        for i, v in enumerate(names):  # every seed as a dot: with three seeds the spread says more than the bar
            values = [r["metrics"][key] for r in runs or [] if r["variant"] == v]
            ax.scatter([i] * len(values), values, s=10, color="black", zorder=3)
        ax.set_xticks(range(len(names)), [short_label(v) for v in names])
        ax.set_title(f"{label} {'↑' if higher else '↓'}", fontsize=9)
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(names))],
               [LABELS[v] for v in names], loc="lower center", ncol=len(names), fontsize=8)
    fig.suptitle("bars: mean ± std over seeds; dots: one seed each", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = out / "chart.png"
    fig.savefig(path, dpi=110)
    return path


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or what ``platform`` knows where /proc/cpuinfo is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_record(device: str) -> dict:
    """Where a run was made. The same command and seed drift to other weights on another CPU or torch build, so
    runs pooled across sessions say which machine each came from."""
    return {"device": device, "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": importlib.metadata.version("torch"), "python": platform.python_version()}


def run_variant(preset: dict, variant: str, seed: int, data: Path, run_dir: Path, device: str, jobs: int) -> dict:
    """Train one (variant, seed) (nothing for ``random``) and probe it → the run's record for results.json."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record = {"variant": variant, "seed": seed, "machine": machine_record(device)}
    if variant == "random":
        model_args = ["--random-init", preset["random_variant"]]
        record.update(wall_s=0.0, steps=0, command=None)
    else:
        cmd = train_command(preset, variant, seed, data, run_dir, device, jobs)
        say(f"{variant} seed {seed}: training (log {logs / 'train.log'})")
        record.update(wall_s=run(cmd, logs / "train.log"), command=cmd,
                      steps=preset_steps(preset))
        model_args = ["--model", str(run_dir / "final")]
    cls = "syn" if trains_on_synthetic_captions(variant) else "alt"
    say(f"{variant} seed {seed}: probing (logs {logs})")
    start = time.perf_counter()
    record["metrics"] = probe(model_args, data, run_dir / "probes", preset, seed, cls, logs)
    record["probe_s"] = time.perf_counter() - start
    return record


def say(message: str) -> None:
    """A timestamped progress line (with --jobs, runs interleave; the stamps say what ran when)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def probe_split_name(train: int, val: int) -> str:
    """"probe1000-200": how folders name a probe split of ``train`` → ``val`` scenes."""
    return f"probe{train}-{val}"


def recipe_tag(steps: int | None, scenes: int | None, overrides: list[str],
               probe_split: tuple[int, int] | None = None) -> str:
    """Suffix of a changed recipe's results and run folders ("" for the preset's own recipe).

    A changed recipe (steps, scenes, overrides, probe split) gets its own folders, so it can neither resume from nor
    be mixed into the preset's runs; other seeds or variants of the same recipe share them.
    """
    return (f"-steps{steps}" if steps else "") + (f"-scenes{scenes}" if scenes else "") + (
        f"-{probe_split_name(*probe_split)}" if probe_split else "") + (
        "-set" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8] if overrides else "")


def scenes_folder(scenes: int | None, probe_split: tuple[int, int] | None) -> str:
    """The scenes dataset's folder name: another scene count or probe split gets its own folder, because
    regenerating a shared one would pull data from under running jobs."""
    return "scenes" + (str(scenes) if scenes else "") + (f"-{probe_split_name(*probe_split)}" if probe_split else "")


def recorded_config(preset: dict, runs: list[dict]) -> dict:
    """The recipe as results.json records it: seeds and variants are those of the runs the file holds.

    A results file collects runs from several invocations (``--seeds 3 4`` adds to seeds 0-2, ``--variants`` adds a
    variant), so the current invocation's seeds and variants would misstate what the numbers rest on.
    """
    if not runs:
        return preset
    return {**preset, "seeds": sorted({r["seed"] for r in runs}),
            "variants": sorted({r["variant"] for r in runs}, key=list(LABELS).index)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--out", default="results/ablation", help="results: results.json, table.md, chart.png")
    p.add_argument("--workdir", default="runs/ablation", help="scenes data and training runs (large; not committed)")
    p.add_argument("--seeds", type=int, nargs="*", help="override the preset's seeds")
    p.add_argument("--variants", nargs="*", choices=[*VARIANTS, "random"], help="override the preset's variants")
    p.add_argument("--steps", type=int, help="override the preset's training steps")
    p.add_argument("--scenes", type=int, help="override the preset's number of pretraining scenes (the probe split "
                                              "stays the same images)")
    p.add_argument("--probe-split", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                   help="override the preset's probe split sizes (scenes the probes fit on and are measured on); "
                        "the pretraining scenes stay the same images")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training override for every variant (repeatable), e.g. data.views.global_scale=[0.9,1.0]")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained and probed at a time (tiny towers leave a GPU mostly idle; on CPU keep 1)")
    p.add_argument("--report", action="store_true",
                   help="train and probe nothing: write table, chart and JSON from the runs finished so far")
    args = p.parse_args(argv)
    if args.scenes is not None and args.scenes < 1:
        p.error(f"--scenes {args.scenes}: expected at least one pretraining scene")
    if args.probe_split is not None and min(args.probe_split) < 1:
        p.error(f"--probe-split {' '.join(map(str, args.probe_split))}: expected at least one scene in each split")
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected at least one run at a time")
    share_cores(args.jobs)  # inherited by every probe (training passes its own share to accelerate)
    preset = dict(PRESETS[args.preset])
    if args.seeds:
        preset["seeds"] = args.seeds
    if args.variants:
        preset["variants"] = args.variants
    if args.steps:
        preset = with_steps(preset, args.steps)
    if args.overrides:
        preset["train"] = [*preset["train"], *args.overrides]
    if args.scenes:
        preset["scenes"] = {**preset["scenes"], "num_pretrain": args.scenes}
    probe_split = tuple(args.probe_split) if args.probe_split else None
    if probe_split:
        preset["scenes"] = {**preset["scenes"], "num_train": probe_split[0], "num_val": probe_split[1]}
    tag = recipe_tag(args.steps, args.scenes, args.overrides, probe_split)
    out = Path(args.out) / f"{args.preset}{tag}"
    results_file = out / "results.json"
    if args.report and not results_file.is_file():
        raise SystemExit(f"--report: no finished runs yet ({results_file} does not exist)")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) / args.preset
    work.mkdir(parents=True, exist_ok=True)
    data = work / scenes_folder(args.scenes, probe_split)
    if not args.report:
        make_scenes(preset, data, work / f"{data.name}.log")
    runs: list[dict] = json.loads(results_file.read_text())["runs"] if results_file.is_file() else []
    done = {(r["variant"], r["seed"]) for r in runs}
    todo = [] if args.report else [(v, s) for s in preset["seeds"] for v in preset["variants"] if (v, s) not in done]
    lock = threading.Lock()

    def save(**extra) -> None:
        results_file.write_text(json.dumps({"preset": args.preset, "config": recorded_config(preset, runs),
                                            "jobs": args.jobs, "runs": runs, **extra}, indent=2))

    def train_and_probe(variant: str, seed: int) -> None:
        record = run_variant(preset, variant, seed, data, work / f"runs{tag}" / f"{variant}-seed{seed}", args.device,
                             args.jobs)
        with lock:  # runs finish in any order with --jobs; the file always holds every finished one
            runs.append(record)
            save()
            say(f"{variant} seed {seed}: done in {record['wall_s'] + record['probe_s']:.0f} s: {record['metrics']}")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads: each run is a subprocess
        for future in [pool.submit(train_and_probe, v, s) for v, s in todo]:
            future.result()  # re-raises a failed run's error (the others still finish)
    summary = {}
    for variant in preset["variants"]:
        vr = [r for r in runs if r["variant"] == variant]
        if not vr:  # only possible with --report before this variant's first run finished
            continue
        summary[variant] = {"metrics": aggregate(vr), "steps": vr[0]["steps"], "seeds": sorted(r["seed"] for r in vr),
                            "wall_s": statistics.mean(r["wall_s"] for r in vr),
                            "gflop": 0.0 if variant == "random" else
                            step_flops(preset, variant, args.device) * vr[0]["steps"] / 1e9}
    comparisons = {f"{a}->{b}": paired_differences(runs, a, b) for a, b in COMPARISONS}
    save(summary=summary, comparisons={k: v for k, v in comparisons.items() if v})
    print(write_table(summary, args.preset, preset, out, runs, args.jobs))
    print(f"chart: {write_chart(summary, out, runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
