"""A DPT depth probe with glibc's default malloc against the settings the command-line tools apply.

    python bench/allocator.py                          # tiny_p8 random tower, 128 px, 50 iterations
    python bench/allocator.py --iterations 200 --fusion 256

Both runs are the same ``tips-probe depth --head dpt`` command on the same cached features of a small
``tips-scenes`` probe split generated into a temporary folder; each runs in its own process, one with
``TIPS_MALLOC=default`` (glibc as it comes) and one with ``tips.cli.allocator``'s settings. Printed: wall, user and
system seconds of each (system time is where the fresh ``mmap`` pages are paid for), peak memory, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tips
from tips_pipelines.scenes import main as scenes_main

REPO = Path(__file__).resolve().parents[1]


def run_probe(args: argparse.Namespace, scenes: Path, model: Path, cache: Path, out: Path, malloc: str) -> dict:
    """Wall, user and system seconds and peak memory of one probe run in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env |= {"TIPS_MALLOC": malloc, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "tips_eval.cli", "depth", "--model", str(model), "--dataset", f"scenes:{scenes}",
           "--resolution", str(args.size), "--protocol", "fast", "--head", "dpt", "--num-workers", "0", "--no-progress",
           "--iterations", str(args.iterations), "--cache-dir", str(cache), "-o", str(out), f"dpt.fusion={args.fusion}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage, peak memory included
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="tiny_p8")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=32)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--fusion", type=int, default=64, help="DPT decoder width")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scenes_main(["--out", str(tmp / "scenes"), "--num-train", str(args.num_train), "--num-val", "8",
                     "--num-pretrain", "0", "--resolution", str(args.size), "--seed", "0", "--num-workers", "1"])
        tips.save(tips.create_model(args.variant), tmp / "model")
        # The first run also fills the feature cache; a throw-away 1-iteration run keeps that out of both timings.
        args_warm = argparse.Namespace(**{**vars(args), "iterations": 1})
        run_probe(args_warm, tmp / "scenes", tmp / "model", tmp / "cache", tmp / "warm", "default")
        results = {name: run_probe(args, tmp / "scenes", tmp / "model", tmp / "cache", tmp / name, malloc)
                   for name, malloc in (("glibc default", "default"), ("tips.cli.allocator", ""))}

    print(f"DPT depth probe: {args.variant} at {args.size} px, fusion {args.fusion}, {args.iterations} iterations, "
          f"{args.num_train} train images, torch threads per process: {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| malloc | wall s | user s | sys s | peak MB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | {r['peak_mb']:.0f} |")
    ratio = results["glibc default"]["wall"] / results["tips.cli.allocator"]["wall"]
    print(f"\nspeed-up of tips.cli.allocator over glibc's defaults: {ratio:.2f}x (wall time, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
