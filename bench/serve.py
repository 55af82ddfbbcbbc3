"""tips-serve under load: throughput and latency at several client concurrencies, with dynamic batching on and off,
against the same model called in-process.

    python -m bench.serve                                   # tiny random model, image embeddings, 1/4/16/32 clients
    python -m bench.serve --kind text --requests 64         # text embeddings
    python -m bench.serve --variant s14 --requests 256      # a larger tower (random weights: speed only)

Each request embeds one item (a photo at the model's size for ``image``, a sentence for ``text``) through
``POST /v1/embeddings`` of ``tips-serve --random-init VARIANT`` on 127.0.0.1, started in its own process.
``batching on`` is ``--max-batch 32 --max-wait-ms 5``, ``off`` is ``--max-batch 1``. For each concurrency C, C
asyncio clients (each its own HTTP connection) send ``--requests`` requests in all; the table gives requests/s, p50 and p99
latency, and the ratio of batched to unbatched throughput. ``in-process`` is the same model called directly: one
item per call (the unbatched bound, no HTTP) and 32 items per call (the batched bound).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import torch
from PIL import Image

from tips.inference import random_model
from bench.machine import cpu_name


@contextmanager
def serving(variant: str, max_batch: int, threads: int | None):
    """``tips-serve --random-init VARIANT`` in its own process (the clients' threads never share its GIL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.Popen([sys.executable, "-m", "tips.cli.serve", "--random-init", variant, "--tokenizer", "bpe",
                             "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", "5",
                             "--device", "cpu"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(url + "/health", timeout=5).raise_for_status()
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise RuntimeError("tips-serve exited before answering /health") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def workload(kind: str, n: int, side: int) -> list[dict]:
    """n request bodies of one item each: distinct photos (noise + gradient) or sentences of varying length."""
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(n):
        if kind == "text":
            bodies.append({"input": " ".join(["a photo of a red bicycle"] * (1 + i % 5)) + f" {i}"})
        else:
            pixels = (rng.random((side, side, 3)) * 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            bodies.append({"input": [{"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}]})
    return bodies


def load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, np.ndarray]:
    """(requests/s, latencies in ms) of sending ``bodies`` from ``concurrency`` clients, each on its connection."""

    async def run() -> list[float]:
        todo = iter(bodies)
        times: list[float] = []
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
            async def worker() -> None:
                for body in todo:
                    started = time.perf_counter()
                    r = await client.post(url + "/v1/embeddings", json={**body, "encoding_format": "base64"})
                    r.raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return times

    started = time.perf_counter()
    times = asyncio.run(run())
    return len(bodies) / (time.perf_counter() - started), np.array(times)


@torch.inference_mode()
def in_process(model, kind: str, bodies: list[dict], batch: int) -> float:
    """items/s of the model called directly (decode + preprocess + forward), ``batch`` items per call."""
    started = time.perf_counter()
    for lo in range(0, len(bodies), batch):
        chunk = bodies[lo:lo + batch]
        if kind == "text":
            model.encode_text([b["input"] for b in chunk])
        else:
            images = [Image.open(io.BytesIO(base64.b64decode(b["input"][0]["image"].split(",", 1)[1]))) for b in chunk]
            model.encode_image(torch.stack([model.preprocess(im.convert("RGB")) for im in images]))
    return len(bodies) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--kind", choices=("image", "text"), default="image")
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the server and of the "
                        "in-process calls (default torch's)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = random_model(args.variant, "bpe", seed=0)  # the weights tips-serve --random-init builds
    bodies = workload(args.kind, args.requests, model.image_size)
    in_process(model, args.kind, bodies[:4], 4)  # warm-up
    rows = {"in-process, 1 per call": in_process(model, args.kind, bodies, 1),
            "in-process, 32 per call": in_process(model, args.kind, bodies, 32)}
    results: dict[str, dict[int, dict[str, float]]] = {}
    for label, max_batch in (("batching on", 32), ("batching off", 1)):
        with serving(args.variant, max_batch, args.threads) as url:
            load(url, bodies[:8], 4)  # warm-up: connections, first forwards
            results[label] = {}
            for c in args.concurrency:
                rate, times = load(url, bodies, c)
                results[label][c] = {"req_per_s": rate, "p50_ms": float(np.percentile(times, 50)),
                                     "p99_ms": float(np.percentile(times, 99))}
    print(f"tips-serve, {args.variant} ({args.kind} embeddings, {args.requests} requests of one item per level), "
          f"{cpu_name()}, torch threads {torch.get_num_threads()}")
    print(f"{'':>14} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, by_c in results.items():
        for c, r in by_c.items():
            print(f"{label:>14} {c:>7} {r['req_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    for label, rate in rows.items():
        print(f"{label:>24}: {rate:8.1f} items/s (no HTTP)")
    c16 = 16 if 16 in args.concurrency else args.concurrency[-1]
    ratio = results["batching on"][c16]["req_per_s"] / results["batching off"][c16]["req_per_s"]
    print(f"batched / unbatched throughput at {c16} clients: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"variant": args.variant, "kind": args.kind, "requests": args.requests, "cpu": cpu_name(),
                       "threads": torch.get_num_threads(), "served": results, "in_process": rows,
                       "ratio_at": c16, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
