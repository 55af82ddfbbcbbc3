"""A TIPS training step against a CLIP-only step of the same towers and batch, in one run.

Prints the median step times and their ratio, the forward + backward FLOP ratio (torch.utils.flop_counter),
the time spent outside the towers (losses, optimiser, EMA update) and peak memory. Target: the time ratio is
at most 1.1 × the FLOP ratio, i.e. TIPS adds no overhead beyond the compute it adds. Also prints, per step,
samples/s, TFLOP/s from the analytic count (tips.train.flops) and MFU (peak from the device name or --peak-tflops).

    python bench/train_step.py                      # S/14 towers, batch 8, 224 px + 6 × 98 px, CPU
    python bench/train_step.py --device cuda --batch 64 --mixed-precision bf16
    python bench/train_step.py --device cuda --variant b14 --batch 64 --mixed-precision bf16 --compile
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from tips.data import Batch
from tips.train import Trainer, load_config, with_patch_selection


def make_batch(B: int, size: int, local: int, M: int, patch: int, device: str) -> Batch:
    g = torch.Generator().manual_seed(0)
    N = (size // patch) ** 2
    mask = torch.rand(B, N, generator=g).argsort(dim=1) < round(0.75 * N)
    ids = torch.randint(1, 30000, (B, 64), generator=g)
    padding = torch.arange(64)[None].expand(B, -1) >= 20
    batch = Batch(
        torch.rand(B, 3, size, size, generator=g), torch.rand(B, M, 3, local, local, generator=g), mask,
        ids[:, :24], padding[:, :24], ids[:, :24].flip(1), padding[:, :24], [str(i) for i in range(B)],
    )  # fmt: skip  (captions trimmed to the 24-token bucket of their 20 tokens, as the collate does)
    return batch.to(device)


class Step:
    """``Trainer.train_step`` + ``after_step`` of a run configured by ``overrides`` (CLIP-only = distill and mask
    weights 0): the very step the trainer runs, timed as a whole, with the optimiser and the teacher update
    (``after_step``) timed on their own."""

    def __init__(self, overrides: list[str], device: str, mixed_precision: str) -> None:
        cfg = load_config(None, ["data.train=unused.tar", f"run.mixed_precision={mixed_precision}",
                                 "optim.lr=1e-4", "optim.warmup_frac=0", *overrides])
        torch.manual_seed(0)
        self.trainer = Trainer(cfg)
        self.trainer.module.train()
        self.timings: dict[str, list[float]] = {"step": [], "optimizer": [], "ema": []}
        self._sync = lambda: None
        inner = self.trainer.optimizer.optimizer
        inner.register_step_pre_hook(lambda *a: self._mark("optimizer_start"))
        inner.register_step_post_hook(lambda *a: self._mark("optimizer_end"))
        self._marks: dict[str, float] = {}

    def _mark(self, name: str) -> None:
        self._sync()
        self._marks[name] = time.perf_counter()

    def __call__(self, batch: Batch, sync) -> None:
        self._sync, trainer = sync, self.trainer
        batch = self._prepared(batch)
        schedule = trainer.schedule(trainer.step)
        t0 = time.perf_counter()
        result = trainer.train_step(itertools.repeat(batch), schedule)
        sync()
        t1 = time.perf_counter()
        trainer.after_step(result, schedule)
        sync()
        t2 = time.perf_counter()
        self.timings["step"].append(t2 - t0)
        self.timings["optimizer"].append(self._marks["optimizer_end"] - self._marks["optimizer_start"])
        self.timings["ema"].append(t2 - t1)

    def _prepared(self, batch: Batch) -> Batch:
        """The batch as the trainer hands it to the step: patches selected on the host, then on the device."""
        if getattr(self, "_batch", None) is None:
            self._batch = with_patch_selection(batch, self.trainer.plan).to(self.trainer.accelerator.device)
        return self._batch

    def flops(self, batch: Batch) -> int:
        """Forward + backward FLOPs of one step (the optimiser update is not counted)."""
        trainer = self.trainer
        batch = self._prepared(batch)
        with FlopCounterMode(display=False) as counter:
            trainer.module(batch, trainer.teacher, 0.07)["loss"].backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def loss_time(device: str, B: int, M: int, K: int, T: int, sync, repeats: int = 5) -> float:
    """Median time of the losses alone (forward + backward on fixed logits), TIPS terms beyond CLIP's."""
    from tips.losses import DINOLoss, IBOTPatchLoss

    dino, ibot = DINOLoss(K).to(device), IBOTPatchLoss(K).to(device)
    s_cls = torch.randn(B, M, K, device=device, requires_grad=True)
    t_cls = torch.randn(B, K, device=device)
    s_patch = torch.randn(T, K, device=device, requires_grad=True)
    t_patch = torch.randn(T, K, device=device)
    w = torch.full((T,), 1.0 / T, device=device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (dino(s_cls, t_cls, 0.07) + ibot(s_patch, t_patch, w, 0.07)).backward()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="s14")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=98)
    p.add_argument("--num-local", type=int, default=6)
    p.add_argument("--prototypes", type=int, default=8192, help="DINO and iBOT K (32768 in the full recipe)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    p.add_argument("--compile", action="store_true", help="run.compile=true (per-block torch.compile, inductor)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: from its name)")
    args = p.parse_args(argv)
    dev = args.device
    if dev == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # the trainer's accelerator picks the device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    common = [f"model.variant={args.variant}", "model.tokenizer=bpe", "model.drop_path_rate=0.0",
              f"loss.dino_k={args.prototypes}", f"loss.ibot_k={args.prototypes}", f"data.views.global_size={args.size}",
              f"data.views.local_size={args.local_size}", f"data.views.num_local={args.num_local}",
              f"run.compile={str(args.compile).lower()}"]
    if args.peak_tflops:
        common.append(f"run.peak_tflops={args.peak_tflops}")
    batch = make_batch(args.batch, args.size, args.local_size, args.num_local, 14, "cpu")
    runs = {
        "clip": Step(common + ["loss.weights.distill=0", "loss.weights.mask=0"], dev, args.mixed_precision),
        "tips": Step(common, dev, args.mixed_precision),
    }
    flops = {name: step.flops(batch) for name, step in runs.items()}
    memory = {}
    for name, step in runs.items():  # CLIP first: ru_maxrss only grows, so TIPS's peak is read after
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step(batch, sync)
        step.timings = {k: [] for k in step.timings}
        memory[name] = peak_memory_mb(dev)
    for _ in range(args.iters):  # interleave so load changes hit both alike
        for name, step in runs.items():
            step(batch, sync)
            memory[name] = max(memory[name], peak_memory_mb(dev))
    med = {name: {k: statistics.median(v) for k, v in s.timings.items()} for name, s in runs.items()}
    N = (args.size // 14) ** 2
    extra_loss = loss_time(dev, args.batch, args.num_local, args.prototypes, args.batch * round(0.75 * N), sync)
    time_ratio = med["tips"]["step"] / med["clip"]["step"]
    flop_ratio = flops["tips"] / flops["clip"]
    print(f"device {dev}, variant {args.variant}, batch {args.batch}, {args.size} px + {args.num_local} x "
          f"{args.local_size} px, K={args.prototypes}, precision {args.mixed_precision}")
    print("| step | median s | fwd+bwd GFLOP | optimizer s | EMA s | peak memory MB |")
    print("|---|---|---|---|---|---|")
    for name in runs:
        m = med[name]
        print(f"| {name} | {m['step']:.3f} | {flops[name] / 1e9:.1f} | {m['optimizer']:.3f} | {m['ema']:.3f} | "
              f"{memory[name]:.0f} |")
    print("\n| step | samples/s | analytic GFLOP/sample | TFLOP/s per device | MFU |")
    print("|---|---|---|---|---|")
    for name, step in runs.items():
        step.trainer._text_len = batch.alt_ids.shape[1]
        perf = step.trainer.perf(args.batch / med[name]["step"])
        mfu = f"{100 * perf['perf/mfu']:.1f} %" if "perf/mfu" in perf else "unknown peak (--peak-tflops)"
        print(f"| {name} | {perf['perf/samples_per_s']:.1f} | {step.trainer.flops_per_sample() / 1e9:.1f} | "
              f"{perf['perf/tflops_per_gpu']:.3f} | {mfu} |")
    outside = med["tips"]["optimizer"] + med["tips"]["ema"] + extra_loss
    print(f"\nTIPS / CLIP time ratio {time_ratio:.2f}; FLOP ratio {flop_ratio:.2f}; "
          f"time / FLOP ratio {time_ratio / flop_ratio:.2f} (target <= 1.10)")
    print(f"TIPS time outside the towers: optimizer {med['tips']['optimizer']:.3f} s + EMA {med['tips']['ema']:.3f} s "
          f"+ DINO/iBOT losses {extra_loss:.3f} s = {outside:.3f} s ({100 * outside / med['tips']['step']:.1f} % of the step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
