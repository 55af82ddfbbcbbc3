"""``accelerate launch -m tips.cli.train --config configs/pretrain/<recipe>.yaml [-o DIR] key=value …``"""

from __future__ import annotations

import argparse
import logging
import sys

from ..io.recipes import describe_recipes
from ..train.config import load_config
from .allocator import tune_cpu_allocator
from .errors import CliParser, UsageError, add_debug_arg, run_main
from .model_args import add_output_arg

EXAMPLES = """\
examples:
  # the demo recipe on the embedded scenes (tips-scenes writes the shards), 20 steps on the CPU
  tips-scenes -o data/scenes --num-pretrain 256 --num-train 0 --num-val 0 --resolution 128 --shard-size 64
  tips-train --config configs/pretrain/demo_cpu.yaml -o runs/demo "data.train=[data/scenes/pretrain/shard-{000000..000003}.tar]" run.steps=20
  # the TIPS B/14 recipe on every GPU of a machine
  accelerate launch --multi_gpu --num_processes 8 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m tips.cli.train --config configs/pretrain/tips_v1_b14.yaml -o runs/b14 "data.train=shards/train-{000000..000999}.tar"
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-train", description="TIPS pretraining (launch with accelerate launch -m "
                                "tips.cli.train)", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", metavar="YAML",
                   help="YAML recipe: a file, or a bundled recipe's name such as pretrain/demo_cpu (see "
                        "--list-configs); repeat to merge more (e.g. model/tips_b14), later files win")
    p.add_argument("--list-configs", action="store_true", help="list the bundled recipes and exit")
    add_output_arg(p, "run folder: checkpoints, logs and the final export (run.output_dir; KEY=VALUE overrides win)")
    p.add_argument("--force", action="store_true",
                   help="start afresh in a run folder that holds an earlier run, deleting its contents (run.force=true)")
    add_debug_arg(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, applied last, e.g. run.steps=100 loss.weights.mask=0")
    return p


def main(argv: list[str] | None = None) -> int:
    """``tips-train``; returns 0 on success, 2 for a bad config or override, 1 with one line on stderr on failure."""
    tune_cpu_allocator()
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides before and after -o / --config alike
    if args.list_configs:
        print(describe_recipes())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "torch.distributed"):  # per-file save/load chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    force = ["run.force=true"] if args.force else []
    overrides = ([f"run.output_dir={args.out}"] if args.out is not None else []) + force + args.overrides
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:  # a value out of range, named with its key: a usage error
        raise UsageError(str(e)) from None
    from ..train.trainer import Trainer

    final = Trainer(cfg).fit()
    print(f"final export: {final}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
