"""``tips-merge``: average checkpoints of one architecture into one (a "model soup", as EmbeddingGemma merges
checkpoints trained on different data mixtures).

    tips-merge runs/a/checkpoints/step-00010000 runs/b/final --weights 0.7 0.3 -o merged/
    tips-merge A B C --with-heads -o merged/      # also average the self-distillation heads (training checkpoints)

Each CKPT is a ``save_pretrained`` folder, a training checkpoint folder (its ``export/`` is used) or anything
else :func:`tips.load` reads (without ``--with-heads``). Every floating tensor is the weighted mean of the
inputs (weights normalised to sum 1; default equal). The logit scales are log(1/τ), so averaging them averages
the temperatures in log space (a weighted geometric mean of τ). Checkpoints whose configs, tensor names or
shapes differ are refused, naming the first difference. The result is a ``save_pretrained`` folder.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..formats.pretrained import save_pretrained
from ..inference.merge import merge
from .errors import CliParser, add_debug_arg, run_main
from .model_args import add_output_arg

EXAMPLES = """\
examples:
  # two models of one architecture (here random tiny ones), averaged 3:1
  python -c "import tips; [tips.save(tips.create_model('tiny'), f'out/{n}') for n in 'ab']"
  tips-merge out/a out/b --weights 3 1 -o out/merged
  # training checkpoints with their self-distillation heads
  tips-merge runs/a/checkpoints/step-00010000 runs/b/checkpoints/step-00010000 --with-heads -o out/merged
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-merge", description="Average checkpoints of one architecture into one (a model soup).", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="save_pretrained or training checkpoint folders")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per CKPT (normalised; default equal)")
    p.add_argument("--with-heads", action="store_true", help="also average the heads.* tensors of training exports")
    add_output_arg(p, "output save_pretrained folder", required=True)
    add_debug_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-merge``; returns 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    model, heads = merge(args.checkpoints, args.weights, args.with_heads)
    path = save_pretrained(model, args.out, heads)
    print(f"merged {len(args.checkpoints)} checkpoints into {path}" + (f" ({len(heads)} head tensors)" if heads else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
