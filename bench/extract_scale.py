"""tips-extract on one process against two (torchrun), same images, same model, same machine.

    python -m bench.extract_scale                      # 256 generated images, random S/14 at 224, CPU
    python -m bench.extract_scale --images 32 --variant tiny --resolution 56   # a dry run in seconds

Each run is a fresh ``torchrun --nproc_per_node N --no-python tips-extract`` into its own folder; the threads are
split evenly (``OMP_NUM_THREADS`` = cores / N), so both runs use the whole machine. Printed: wall seconds (launch
included), images/s overall and per process, and the speed-up of two processes over one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import cpu_name


def run(n: int, images: Path, out: Path, args: argparse.Namespace) -> float:
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = ["torchrun", "--nproc_per_node", str(n), "--master_port", "0", "--no-python", "tips-extract", str(images),
           "-o", str(out), "--random-init", args.variant, "--resolution", str(args.resolution), "--num-workers", "1",
           "--batch-size", str(args.batch), "--shard-size", str(args.chunk), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--variant", default="s14")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--chunk", type=int, default=32, help="images per chunk (--shard-size)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(images / f"{i:05d}.jpg")
        seconds = {n: run(n, images, Path(tmp) / f"out{n}", args) for n in (1, 2)}
    print(f"{args.images} images, random {args.variant} at {args.resolution} px, {os.cpu_count()} cores ({cpu_name()})")
    print("| processes | wall s | images/s | images/s per process |\n|---|---|---|---|")
    for n, s in seconds.items():
        print(f"| {n} | {s:.1f} | {args.images / s:.1f} | {args.images / s / n:.1f} |")
    print(f"two processes vs one: {seconds[1] / seconds[2]:.2f}x")


if __name__ == "__main__":
    main()
