"""``tips-demo``: the whole system on the embedded default, with no download.

1. ``tips-scenes`` generates the procedural scenes dataset (skipped when it is already there);
2. ``accelerate launch -m tips.cli.train`` pretrains the demo recipe (``configs/pretrain/demo_cpu.yaml``);
3. ``tips-probe`` measures the trained checkpoint and a randomly initialised model of the same architecture on
   the scenes probe split with the same seed: retrieval (its captions), zero-shot classification of each
   image's main object, and the linear segmentation and depth probes;
4. a table (direction, trained, random, a reading computed from the numbers) is printed and written to
   ``results.md`` and ``results.json``, with two pictures: ``picture.png`` (what pretraining measurably bought:
   text queries with each model's top images, and object-pixel depth) and ``dense.png`` (the dense probes' panels).

Data and pretraining run as subprocesses of their public commands (``tips-scenes``, ``accelerate launch``), so
no application imports another; the probes are this application's own ``tips-probe``, called in-process (each
subprocess would pay Python's and torch's start-up again, several seconds apiece on a 2-core machine).
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
from omegaconf import OmegaConf

from tips.cli.allocator import tune_cpu_allocator
from tips.cli.errors import CliParser, add_debug_arg, run_main
from tips.cli.model_args import add_output_arg
from tips.io.recipes import resolve_recipe

from . import cli as probe_cli
from .demo_picture import benefit_page, dense_page
from .demo_report import markdown_table, summarise, write_results
from .report import load_samples

GLOBAL_RESOLUTION = 64  # data.views.global_size of the recipe
# The fast protocol's 1,000 iterations of the linear heads were most of the old demo's 323 s of probes; both
# models get the same budget, so the comparison stays fair, but the absolute numbers are a shorter fit.
PROBE_ITERATIONS = 300
DEPTH_BINS = 64
NUM_QUERIES = 3  # text queries pictured with their top images
RECIPE = resolve_recipe("pretrain/demo_cpu")  # bundled: the demo runs from any folder, from a wheel too


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


def run_probe(step: str, argv: list[str]) -> float:
    """Run ``tips-probe ARGV`` in this process; returns seconds taken."""
    print(f"\n== {step}\n$ tips-probe {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = probe_cli.main(argv)
    if code:
        raise SystemExit(f"tips-demo: step '{step}' failed with exit code {code}")
    return time.perf_counter() - start


def probe_commands(model_args: list[str], probe: Path, out: Path, cache: Path, resolution: int, seed: int,
                   iterations: int) -> dict[str, list[str]]:
    """The four probes of one model. The dense ones cache features under the demo's folder (their feature
    settings differ, DINOv2's: final norm for segmentation, raw tokens + CLS for depth, so each has its own)."""
    dense = model_args + ["--dataset", f"scenes:{probe}", "--resolution", str(resolution), "--seed", str(seed),
                          "--out", str(out), "--protocol", "fast", "--cache-dir", str(cache),
                          "--iterations", str(iterations), "--num-vis", "3", "--num-workers", "0"]
    # Global tasks at the recipe's global-crop size (whole 128 px scenes shrunk to 64 px are what pretraining saw);
    # data-loading workers cost more to start than 64-320 small PNGs take to decode.
    # CLS2 and the synthetic captions: the alt-text is noisy by design and its CLS barely moves in a demo's steps.
    global_args = model_args + ["--resolution", str(GLOBAL_RESOLUTION), "--seed", str(seed), "--out", str(out),
                                "--num-workers", "0", "--cls", "syn"]
    num_queries = ["--num-vis", str(NUM_QUERIES)]
    return {
        "segmentation": ["segmentation", *dense, "--object-classes"],
        # 64 depth bins, not 256: the head's upsampled logits were most of a depth probe's time; the prediction
        # is the probability-weighted mean of the bin centres, so it is not quantised to the coarser bins.
        "depth": ["depth", *dense, "--mask", "objects", "--bins", str(DEPTH_BINS)],
        "retrieval": ["retrieval", "--data", str(probe / "val"), *global_args, *num_queries],
        "zero-shot": ["zero-shot", "--data", f"scenes:{probe}", "--split", "val", *global_args],
    }


def recipe_steps() -> int:
    """The demo recipe's training steps (the pictures' title quotes it)."""
    return int(OmegaConf.load(RECIPE).run.steps)


def read_result(folder: Path, task: str) -> dict:
    files = sorted(folder.glob(f"{task}*.json"), key=lambda f: f.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no {task} result JSON in {folder}")
    return json.loads(files[-1].read_text())


EXAMPLES = """\
examples:
  # the whole system on the embedded default in ./tips-demo (no download)
  tips-demo
  # a shorter pretraining (20 steps) into another folder
  tips-demo -o /tmp/tips-demo --steps 20
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-demo", description=(__doc__ or "").replace("``", ""), epilog=EXAMPLES,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arg(p, "folder for data, run and results (default ./tips-demo)", default="tips-demo")
    p.add_argument("--steps", type=int, help="override the recipe's training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-pretrain", type=int, default=2048)
    p.add_argument("--num-train", type=int, default=256, help="probe train split images")
    p.add_argument("--num-val", type=int, default=64, help="probe val split images (the table's queries)")
    p.add_argument("--resolution", type=int, default=128, help="probe input size (the recipe pretrains at 64)")
    p.add_argument("--probe-iterations", type=int, default=PROBE_ITERATIONS,
                   help=f"training iterations of each dense probe (default {PROBE_ITERATIONS})")
    add_debug_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``tips-demo``; 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    tune_cpu_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    if not RECIPE.is_file():
        raise SystemExit(f"tips-demo: recipe {RECIPE} not found; run tips-demo from a checkout installed with pip install -e .")
    work = args.out.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data, run_dir, results_dir = work / "scenes", work / "run", work / "results"
    timings = {}
    timings["data"] = run("1/4 scenes dataset", command("tips-scenes") + [
        "--out", str(data), "--num-pretrain", str(args.num_pretrain), "--num-train", str(args.num_train),
        "--num-val", str(args.num_val),
        "--resolution", "128", "--seed", str(args.seed), "--shard-size", str(max(1, args.num_pretrain // 4)),
    ], logs)  # fmt: skip
    shards = sorted((data / "pretrain").glob("shard-*.tar"))
    pattern = str(data / "pretrain" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    # Without --cpu, accelerate's single-process launch pins OMP_NUM_THREADS=1: one core instead of all of them.
    # The thread count is passed so that accelerate does not print its "defaults used instead" notice: it is the
    # same number it would choose (PyTorch's default, the physical cores, unless OMP_NUM_THREADS says otherwise).
    threads = str(torch.get_num_threads())
    device = [] if torch.cuda.is_available() else ["--cpu", "--num_cpu_threads_per_process", threads]
    train = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
             *device, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tips.cli.train", "--config", str(RECIPE),
             f"data.train={pattern}", f"run.output_dir={run_dir}", f"run.seed={args.seed}", "run.resume=latest"]
    if args.steps:
        train.append(f"run.steps={args.steps}")
    timings["pretraining"] = run("2/4 pretraining", train, logs)
    checkpoint = run_dir / "final"
    probe, cache = data / "probe", work / "cache"
    results: dict[str, dict[str, dict]] = {"trained": {}, "random": {}}
    for label, model_args in (("trained", ["--model", str(checkpoint)]),
                              ("random", ["--random-init", "tiny_p8", "--tokenizer", "bpe"])):
        out = results_dir / label
        cmds = probe_commands(model_args, probe, out, cache, args.resolution, args.seed, args.probe_iterations)
        for task, cmd in cmds.items():
            timings[f"{task} ({label})"] = run_probe(f"3/4 {task} probe: {label}", cmd)
            results[label][task] = read_result(out, task)
    rows = summarise(results)
    pictures = {(task, label): Path(results[label][task]["paths"]["picture"])
                for label in results for task in ("segmentation", "depth")}
    dense = dense_page(pictures, work / "dense.png")
    depth = {label: load_samples(results[label]["depth"]["paths"]["samples"]) for label in results}
    page = benefit_page({label: results[label]["retrieval"]["metrics"]["examples"] for label in results}, depth,
                        {label: results[label]["depth"]["metrics"]["objects"]["per_image_rmse"] for label in results},
                        rows, work / "picture.png", args.steps or recipe_steps())
    table = markdown_table(rows)
    write_results(work / "results.json", rows, {
        "checkpoint": str(checkpoint), "random_init": "tiny_p8", "picture": str(page), "dense_picture": str(dense),
        "probe_split": str(probe / "val"), "seed": args.seed, "timings_s": {k: round(v, 1) for k, v in timings.items()},
    })
    report = table + f"\n\nPictures: {page} (what pretraining bought), {dense} (dense probes)\n"
    report += "\nTimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f", total {sum(timings.values()):.0f}\n"
    (work / "results.md").write_text(report)
    print("\n== 4/4 results\n" + report + f"\nwritten to {work / 'results.json'} and {work / 'results.md'}; checkpoint {checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
