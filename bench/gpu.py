"""One prepared GPU measurement: training step, FSDP, extraction against transformers, DPT depth — in one command.

    bash bench/gpu.sh                       # on the GPU machine: B/14, bf16, about 5 minutes end to end
    python -m bench.gpu --dry-run           # the same sections on CPU with a tiny model, in seconds (tested)

Each section runs in its own process with its own time limit, so a crash or a timeout loses that section only;
after each one the results so far are written to ``--out`` as ``gpu.json`` (one record per row) and ``gpu.md`` (the
same rows as a markdown table), atomically.

Sections (B/14 unless ``--variant``; bf16 autocast on CUDA, fp32 in the dry run):
- ``train``: one training step of the full TIPS objective (contrastive + self-distillation + masked modelling),
  images/s and MFU from the analytic FLOPs (:mod:`tips.train.flops`), without and with ``run.compile``;
- ``fsdp``: the same step with ``run.parallel=fsdp`` on one device against the plain step;
- ``extract``: image-tower images/s at 224 and 448, ``tips`` against transformers' ``Tipsv2VisionModel`` (SDPA,
  and flash-attention-2 where installed) on the same weights (exported with ``tips.save(format="transformers")``);
- ``predict``: DPT depth prediction images/s at 448 (tower + head).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

SECTIONS = ("train", "fsdp", "extract", "predict")


# ------------------------------------------------------------------------------------------------ sizes
def sizes(args: argparse.Namespace) -> dict:
    """What each section runs: the real B/14 sizes, or tiny ones for --dry-run on CPU."""
    if args.dry_run:
        return {"variant": "tiny", "batch": 2, "global": 56, "local": 28, "num_local": 2, "prototypes": 64,
                "extract": [(28, 2), (56, 2)], "predict": (56, 1), "iters": 1, "warmup": 1}
    return {"variant": args.variant, "batch": args.batch, "global": 224, "local": 98, "num_local": 6,
            "prototypes": 65536 // 2, "extract": [(224, 64), (448, 16)], "predict": (448, 8), "iters": args.iters,
            "warmup": 2}


def timed(fn: Callable[[], object], iters: int, warmup: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``fn`` over ``iters`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ sections
def section_train(args: argparse.Namespace, s: dict, section: str, parallel: list[tuple[str, list[str]]]) -> list[dict]:
    """Training-step images/s and MFU for each configuration in ``parallel`` (override lists by label)."""
    import torch

    from bench.train_step import Step, make_batch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    precision = "bf16" if device == "cuda" else "no"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    common = [f"model.variant={s['variant']}", "model.tokenizer=bpe", "model.drop_path_rate=0.0",
              f"loss.dino_k={s['prototypes']}", f"loss.ibot_k={s['prototypes']}", f"data.views.global_size={s['global']}",
              f"data.views.local_size={s['local']}", f"data.views.num_local={s['num_local']}"]
    patch = 14
    batch = make_batch(s["batch"], s["global"], s["local"], s["num_local"], patch, "cpu")
    rows = []
    for label, extra in parallel:
        step = Step(common + extra, device, precision)
        seconds = timed(lambda: step(batch, sync), s["iters"], s["warmup"], lambda: None)
        step.trainer._text_len = batch.alt_ids.shape[1]
        perf = step.trainer.perf(s["batch"] / seconds)
        rows.append({"section": section, "row": label, "images_per_s": round(perf["perf/samples_per_s"], 2),
                     "tflops": round(perf["perf/tflops_per_gpu"], 3),
                     "mfu": round(perf["perf/mfu"], 4) if "perf/mfu" in perf else None,
                     "detail": f"{s['variant']}, batch {s['batch']}, {s['global']} px + {s['num_local']} x {s['local']} px, "
                               f"K={s['prototypes']}, {precision}"})
        if torch.cuda.is_available():
            rows[-1]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
    return rows


def section_extract(args: argparse.Namespace, s: dict) -> list[dict]:
    """Image-tower images/s, tips against transformers' Tipsv2VisionModel on the same weights."""
    import torch
    import transformers

    import tips

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = tips.create_model(s["variant"])
    model.text = None
    model.cfg = tips.ModelConfig(vision=model.cfg.vision, text=None)
    implementations = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tips.save(model, Path(tmp) / "hf", format="transformers")
        peers = {impl: transformers.Tipsv2VisionModel.from_pretrained(Path(tmp) / "hf", attn_implementation=impl,
                                                                       dtype=dtype).to(device).eval()
                 for impl in implementations}
    model = model.to(device).eval()
    for size, batch in s["extract"]:
        x = torch.rand(batch, 3, size, size, device=device)

        def ours() -> object:
            with torch.inference_mode(), tips.autocast(model, "bfloat16" if dtype == torch.bfloat16 else "float32"):
                return model.encode_image(x).cls_alt

        rate = {"tips": batch / timed(ours, s["iters"], s["warmup"], sync)}
        for impl, peer in peers.items():
            def theirs(peer=peer) -> object:
                with torch.inference_mode():
                    return peer(pixel_values=x.to(dtype)).last_hidden_state[:, 0]
            rate[f"transformers-{impl}"] = batch / timed(theirs, s["iters"], s["warmup"], sync)
        for name, value in rate.items():
            rows.append({"section": "extract", "row": f"{name} {size} px", "images_per_s": round(value, 2),
                         "ratio_tips_over_this": round(rate["tips"] / value, 3),
                         "detail": f"{s['variant']}, batch {batch}, {str(dtype).removeprefix('torch.')}"})
    return rows


def section_predict(args: argparse.Namespace, s: dict) -> list[dict]:
    """DPT depth prediction images/s (tower + head) at the native size."""
    import torch

    import tips

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = tips.create_model(s["variant"]).to(device).eval()
    head = tips.DenseHead(tips.DPTConfig(task="depth", width=model.width, out_channels=256)).to(device).eval()
    size, batch = s["predict"]
    x = torch.rand(batch, 3, size, size, device=device)
    precision = "bfloat16" if device.type == "cuda" else "float32"

    def run() -> object:
        with torch.inference_mode(), tips.autocast(model, precision):
            return head.predict(model, x)

    rate = batch / timed(run, s["iters"], s["warmup"], sync)
    return [{"section": "predict", "row": f"DPT depth {size} px", "images_per_s": round(rate, 2),
             "detail": f"{s['variant']}, batch {batch}, {precision}"}]


def run_section(name: str, args: argparse.Namespace) -> list[dict]:
    s = sizes(args)
    if name == "train":
        # the dry run compiles with the eager backend: the same code path, without minutes of inductor on a CPU
        compiled = ["run.compile=true"] + (["run.compile_backend=eager"] if args.dry_run else [])
        return section_train(args, s, "train", [("step", ["run.compile=false"]), ("step + torch.compile", compiled)])
    if name == "fsdp":
        return section_train(args, s, "fsdp", [("plain (one device)", ["run.parallel=ddp"]),
                                               ("FSDP (one device)", ["run.parallel=fsdp"])])
    if name == "extract":
        return section_extract(args, s)
    return section_predict(args, s)


# ------------------------------------------------------------------------------------------------ report
def machine() -> dict:
    import torch

    from bench.machine import cpu_name

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    return {"gpu": gpu, "cpu": cpu_name(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit}


def write_report(out: Path, header: dict, rows: list[dict], failures: dict[str, str]) -> None:
    """gpu.json and gpu.md with every row so far (atomic: a timeout leaves the last complete pair)."""
    from tips.io.atomic import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "gpu.json", {"machine": header, "rows": rows, "failed_sections": failures})
    lines = [f"GPU: {header['gpu'] or 'none (CPU)'}; torch {header['torch']}; {header['date']}; commit {header['commit']}", "",
             "| section | row | images/s | vs this: tips ratio | TFLOP/s | MFU | detail |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
        lines.append(f"| {r['section']} | {r['row']} | {r['images_per_s']} | {r.get('ratio_tips_over_this', '')} | "
                     f"{r.get('tflops', '')} | {mfu} | {r['detail']} |")
    lines += [f"\n{name} failed: {why}" for name, why in failures.items()]
    write_text_atomic(out / "gpu.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny model and sizes on whatever device is there")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    p.add_argument("--variant", default="b14")
    p.add_argument("--batch", type=int, default=64, help="training batch per device")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--section-timeout", type=int, default=150, help="seconds per section before it is stopped")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # one section, in the child process
    args = p.parse_args(argv)
    if args.section:
        print(json.dumps(run_section(args.section, args)))
        return 0
    names = [n for n in args.sections.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    header, rows, failures = machine(), [], {}
    forwarded = [*(["--dry-run"] if args.dry_run else []), "--variant", args.variant, "--batch", str(args.batch),
                 "--iters", str(args.iters)]
    for name in names:
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.gpu", *forwarded, "--section", name],
                                  capture_output=True, text=True, timeout=args.section_timeout)
            if proc.returncode:
                failures[name] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            else:
                rows += json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            failures[name] = f"stopped after {args.section_timeout} s"
        print(f"{name}: {'failed: ' + failures[name] if name in failures else 'done'} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        write_report(args.out, header, rows, failures)
    print((args.out / "gpu.md").read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
