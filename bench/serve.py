"""tips-serve under load: throughput and latency at several client concurrencies, with dynamic batching on and off,
against the same model called in-process.

    python -m bench.serve                                   # tiny random model, image embeddings, 1/4/16/32 clients
    python -m bench.serve --kind text --requests 64         # text embeddings
    python -m bench.serve --variant s14 --requests 256      # a larger tower (random weights: speed only)

Each request embeds one item (a 224-px photo for ``image``, a sentence for ``text``) through ``POST /v1/embeddings``
of a real uvicorn on 127.0.0.1 (one process, the worker thread of tips.serve). ``batching on`` is
``--max-batch 32 --max-wait-ms 5``, ``off`` is ``--max-batch 1``. For each concurrency C, C client threads send
``--requests`` requests in all (each thread its own HTTP connection); the table gives requests/s, p50 and p99
latency, and the ratio of batched to unbatched throughput. ``in-process`` is the same model called directly: one
item per call (the unbatched bound, no HTTP) and 32 items per call (the batched bound).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

import tips
from bench.machine import cpu_name
from tips.serve import ServedModel, ServeOptions, create_app


@contextmanager
def serving(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


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
    """(requests/s, latencies in ms) of sending ``bodies`` from ``concurrency`` threads."""
    local = threading.local()

    def one(body: dict) -> float:
        client = getattr(local, "client", None) or setattr(local, "client", httpx.Client(timeout=300)) or local.client
        started = time.perf_counter()
        r = client.post(url + "/v1/embeddings", json={**body, "encoding_format": "base64"})
        r.raise_for_status()
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = np.array(list(pool.map(one, bodies)))
    return len(bodies) / (time.perf_counter() - started), times


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
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = tips.create_model(args.variant, tokenizer="bpe").eval()
    bodies = workload(args.kind, args.requests, model.image_size)
    in_process(model, args.kind, bodies[:4], 4)  # warm-up
    rows = {"in-process, 1 per call": in_process(model, args.kind, bodies, 1),
            "in-process, 32 per call": in_process(model, args.kind, bodies, 32)}
    results: dict[str, dict[int, dict[str, float]]] = {}
    for label, max_batch in (("batching on", 32), ("batching off", 1)):
        app = create_app(ServedModel(model, args.variant), ServeOptions(max_batch=max_batch, max_wait_ms=5))
        with serving(app) as url:
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
