"""``accelerate launch -m tips.train --config configs/pretrain/<recipe>.yaml key=value …``"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tips-train", description="TIPS pretraining (launch with accelerate launch -m tips.train)")
    p.add_argument("--config", action="append", help="YAML recipe, e.g. configs/pretrain/demo_cpu.yaml; repeat to merge "
                   "more (e.g. a configs/model/*.yaml), later files win")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.steps=100 loss.weights.mask=0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "torch.distributed"):  # per-file save/load chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = load_config(args.config, args.overrides)
    from .trainer import Trainer

    final = Trainer(cfg).fit()
    print(f"final export: {final}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
