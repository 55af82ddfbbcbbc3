"""The index tips-index chooses under a memory budget, against exact search over the same vectors.

    python -m bench.index                              # 10^6 vectors of width 768, 10^4 centres, --max-memory 1GB
    python -m bench.index --n 20000 --centres 200      # a dry run in seconds

Data: ``n`` database vectors and ``queries`` held-out vectors from one Gaussian mixture — centres drawn from
N(0, I_d), each vector a random centre plus σ·N(0, I_d) (σ = ``--sigma``, 0.5 by default) — L2-normalised, as
embeddings are. The chosen index (:func:`tips.index.plan_index` under ``--max-memory``, ``nprobe`` tuned by
:meth:`tips.index.Index.build` to ``--recall-target`` on a sample of the database) is then measured on the held-out
queries against exact inner-product search (faiss ``IndexFlatIP``, the peer): recall@10, build seconds, index bytes
(serialised) and the query latency p50/p99 (one query at a time), with the ratios.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.machine import cpu_name
from tips.index import EmbeddingSpace, Index, parse_memory


def mixture(n: int, centres: np.ndarray, sigma: float, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """(n, d) float32 unit vectors: a random centre each plus σ·N(0, I), made in chunks to bound peak memory."""
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + sigma * rng.standard_normal((m, d), dtype=np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies_ms(search, queries: np.ndarray) -> np.ndarray:
    """One query at a time, as a service sees them."""
    times = np.empty(len(queries))
    for i in range(len(queries)):
        started = time.perf_counter()
        search(queries[i:i + 1])
        times[i] = (time.perf_counter() - started) * 1000
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--centres", type=int, default=10_000)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--max-memory", default="1GB")
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    started = time.perf_counter()
    database = mixture(args.n, centres, args.sigma, rng)
    queries = mixture(args.queries, centres, args.sigma, rng)
    print(f"data: {args.n} x {args.dim} from {args.centres} centres, sigma {args.sigma}, {args.queries} held-out "
          f"queries ({time.perf_counter() - started:.1f} s); CPU {cpu_name()}, "
          f"{faiss.omp_get_max_threads()} threads")

    space = EmbeddingSpace(model="bench", fingerprint="mixture", kind="cls_alt", width=args.dim)
    started = time.perf_counter()
    index = Index.build(database, {"id": np.arange(args.n)}, space, parse_memory(args.max_memory),
                        recall_target=args.recall_target, k=args.k)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(database)
    exact_build_s = time.perf_counter() - started

    _, truth = exact.search(queries, args.k)
    _, found = index.index.search(queries, args.k)
    recall = np.mean([len(set(t) & set(f)) / args.k for t, f in zip(truth, found)])
    ours = latencies_ms(lambda q: index.index.search(q, args.k), queries)
    peer = latencies_ms(lambda q: exact.search(q, args.k), queries)
    size, exact_size = len(faiss.serialize_index(index.index)), len(faiss.serialize_index(exact))

    tuning = ", ".join(f"nprobe {t['nprobe']}: {t['recall']:.3f}" for t in index.info["tuning"])
    print(f"chosen: {index.info['factory']}, nprobe {index.info['nprobe']} (recall on the build sample: {tuning})")
    print("| index | recall@{k} | build s | bytes | p50 ms | p99 ms |".format(k=args.k))
    print("|---|---|---|---|---|---|")
    print(f"| {index.info['factory']} | {recall:.4f} | {build_s:.1f} | {size / 2**20:.0f} MiB | "
          f"{np.percentile(ours, 50):.2f} | {np.percentile(ours, 99):.2f} |")
    print(f"| Flat (exact, peer) | 1 | {exact_build_s:.1f} | {exact_size / 2**20:.0f} MiB | "
          f"{np.percentile(peer, 50):.2f} | {np.percentile(peer, 99):.2f} |")
    print(f"ratio vs exact: memory {exact_size / size:.2f}x smaller, p50 query {np.percentile(peer, 50) / np.percentile(ours, 50):.2f}x faster")


if __name__ == "__main__":
    main()
