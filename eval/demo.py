"""``tips-demo``: the whole system on the embedded default (about 10 minutes on 2 CPU cores, 5 of them pretraining).

1. ``tips-scenes`` generates the procedural scenes dataset (skipped when it is already there);
2. ``accelerate launch -m tips.train`` pretrains the demo recipe (``configs/pretrain/demo_cpu.yaml``);
3. ``tips-probe segmentation`` and ``tips-probe depth`` measure the trained checkpoint and a randomly
   initialised model of the same architecture on the scenes probe split, with the same seed;
4. a results table is printed and written, with the paths of the pictures.

Each step is a subprocess running the public command, so no application imports another.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "demo_cpu.yaml"


def command(name: str) -> list[str]:
    """The console script ``name`` installed beside this Python (falls back to PATH)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `pip install -e .` in the repository first")
    return [found]


def run(step: str, cmd: list[str], log_dir: Path) -> float:
    """Run one stage, streaming its output (progress bars included); returns seconds taken."""
    print(f"\n== {step}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_name = "".join(c if c.isalnum() else "_" for c in step.split(":")[0]).strip("_")
    with open(log_dir / f"{log_name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
        # Raw chunks, not lines: a progress bar redraws itself with '\r', which line reading would turn into
        # hundreds of printed lines (or hold back until the bar ends).
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character
        for chunk in iter(lambda: proc.stdout.read(4096), b""):  # type: ignore[union-attr]
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            log.write(decoder.decode(chunk))
        log.write(decoder.decode(b"", final=True))
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"tips-demo: step '{step}' failed with exit code {proc.returncode}; log in {log_dir}")
    return time.perf_counter() - start


def probe_commands(model_args: list[str], dataset: str, out: Path, resolution: int, seed: int) -> dict[str, list[str]]:
    common = model_args + ["--dataset", dataset, "--resolution", str(resolution), "--seed", str(seed),
                           "--out", str(out), "--protocol", "fast"]
    return {
        "segmentation": command("tips-probe") + ["segmentation", *common, "--object-classes"],
        "depth": command("tips-probe") + ["depth", *common, "--mask", "objects"],
    }


def read_result(folder: Path, task: str) -> dict:
    files = sorted(folder.glob(f"{task}*.json"))
    if not files:
        raise FileNotFoundError(f"no {task} result JSON in {folder}")
    return json.loads(files[-1].read_text())


def summary_rows(results: dict[str, dict[str, dict]]) -> list[tuple[str, str, str, str]]:
    """(metric, trained, random init, better?) rows from the probe results."""
    rows = []
    metrics = [
        ("object-class mIoU ↑", "segmentation", lambda m: m["miou_subset"], True),
        ("all-class mIoU ↑", "segmentation", lambda m: m["miou"], True),
        ("object-pixel depth RMSE (m) ↓", "depth", lambda m: m["objects"]["rmse"], False),
        ("all-pixel depth RMSE (m) ↓", "depth", lambda m: m["all"]["rmse"], False),
    ]
    for name, task, get, higher in metrics:
        trained, random = get(results["trained"][task]["metrics"]), get(results["random"][task]["metrics"])
        better = trained > random if higher else trained < random
        rows.append((name, f"{trained:.3f}", f"{random:.3f}", "yes" if better else "no"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tips-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="tips-demo", help="folder for data, run and results (default ./tips-demo)")
    p.add_argument("--steps", type=int, help="override the recipe's training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-pretrain", type=int, default=2048)
    p.add_argument("--resolution", type=int, default=128, help="probe input size (the recipe pretrains at 64)")
    args = p.parse_args(argv)
    if not RECIPE.is_file():
        raise SystemExit(f"tips-demo: recipe {RECIPE} not found; run tips-demo from a checkout installed with pip install -e .")
    work = Path(args.workdir).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data, run_dir, results_dir = work / "scenes", work / "run", work / "results"
    timings = {}
    timings["data"] = run("1/4 scenes dataset", command("tips-scenes") + [
        "--out", str(data), "--num-pretrain", str(args.num_pretrain), "--num-train", "256", "--num-val", "64",
        "--size", "128", "--seed", str(args.seed), "--shard-size", str(max(1, args.num_pretrain // 4)),
    ], logs)  # fmt: skip
    shards = sorted((data / "pretrain").glob("shard-*.tar"))
    pattern = str(data / "pretrain" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    # Without --cpu, accelerate's single-process launch pins OMP_NUM_THREADS=1: one core instead of all of them.
    # The thread count is passed so that accelerate does not print its "defaults used instead" notice: it is the
    # same number it would choose (PyTorch's default, the physical cores, unless OMP_NUM_THREADS says otherwise).
    threads = str(torch.get_num_threads())
    device = [] if torch.cuda.is_available() else ["--cpu", "--num_cpu_threads_per_process", threads]
    train = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
             *device, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tips.train", "--config", str(RECIPE),
             f"data.train={pattern}", f"run.output_dir={run_dir}", f"run.seed={args.seed}", "run.resume=latest"]
    if args.steps:
        train.append(f"run.steps={args.steps}")
    timings["pretraining"] = run("2/4 pretraining", train, logs)
    checkpoint = run_dir / "final"
    dataset = f"scenes:{data / 'probe'}"
    results: dict[str, dict[str, dict]] = {"trained": {}, "random": {}}
    for label, model_args in (("trained", ["--model", str(checkpoint)]),
                              ("random", ["--random-init", "tiny_p8"])):
        out = results_dir / label
        for task, cmd in probe_commands(model_args, dataset, out, args.resolution, args.seed).items():
            timings[f"{task} ({label})"] = run(f"3/4 {task} probe: {label}", cmd, logs)
            results[label][task] = read_result(out, task)
    rows = summary_rows(results)
    table = ["| metric (scenes probe val split) | TIPS demo checkpoint | random init | better |", "|---|---|---|---|"]
    table += [f"| {m} | {t} | {r} | {b} |" for m, t, r, b in rows]
    pictures = [results[label][task].get("paths", {}).get("picture") for label in results for task in results[label]]
    report = "\n".join(table) + "\n\nPictures:\n" + "\n".join(f"- {p}" for p in pictures if p) + "\n"
    report += "\nTimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n"
    (work / "results.md").write_text(report)
    print("\n== 4/4 results\n" + report + f"\nwritten to {work / 'results.md'}; checkpoint {checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
