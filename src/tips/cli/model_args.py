"""Command-line arguments the TIPS tools share, with one meaning everywhere (``tips-extract``, ``tips-predict``,
every ``tips-probe`` subcommand). Applications build their parsers from these too.

    parser = argparse.ArgumentParser(...)
    add_model_args(parser)            # --model | --random-init, --text, --tokenizer, --seed, --dtype, --quantize
    add_output_arg(parser, "folder for the features")   # -o/--out DIR
    args = parser.parse_args()
    loaded = model_from_args(args)    # LoadedModel(model, name, record); ModelArgumentError if neither/both
    model = prepare_for_inference(loaded.model, resolve_device(args.device), args.quantize)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.loaded import LoadedModel, build_model
from ..inference.quantize import MODES
from ..models.dtypes import DTYPES

MODEL_HELP = ("checkpoint file or folder, official vision .npz, Hugging Face folder, or an official model name "
              "(e.g. tips-v2-b14); anything tips.load reads")
RANDOM_INIT_HELP = ("a randomly initialised model of this variant (tiny, tiny_p8, s14, b14, ...): a baseline, "
                    "no download")
TEXT_HELP = "official text-tower .npz (or Tipsv2TextModel folder) that goes with an official vision file"
TOKENIZER_HELP = "'bpe' or a SentencePiece .model file (default: what the checkpoint carries)"
RANDOM_TOKENIZER_HELP = ("; with --random-init default the variant's, else bpe, and the text tower takes the "
                         "tokenizer's vocabulary size")


def add_model_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    inference: bool = True,
    seed_help: str = "seed of --random-init (default 0)",
) -> None:
    """``--model`` | ``--random-init`` (one of them, checked by :func:`model_from_args`), ``--text``,
    ``--tokenizer``, ``--seed`` and, with ``inference``, ``--dtype`` / ``--quantize`` (:func:`add_inference_args`)."""
    group = parser.add_argument_group("model") if isinstance(parser, argparse.ArgumentParser) else parser
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--model", metavar="CKPT", help=MODEL_HELP)
    choice.add_argument("--random-init", metavar="VARIANT", help=RANDOM_INIT_HELP)
    group.add_argument("--text", metavar="NPZ", help=TEXT_HELP)
    group.add_argument("--tokenizer", help=TOKENIZER_HELP + RANDOM_TOKENIZER_HELP)
    group.add_argument("--seed", type=int, default=0, help=seed_help)
    if inference:
        add_inference_args(group)


def add_inference_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dtype`` and ``--quantize``, the same flags in every command that encodes (``tips-extract``, ``tips-predict``).

    Use them as ``prepare_for_inference(model, device, args.quantize, args.dtype)`` and ``with autocast(model, args.dtype):``.
    """
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="compute dtype (autocast; bfloat16 is the fast path on CUDA and on CPUs with native bf16 "
                             "(AMX, AVX-512 BF16); emulated and several times slower on AVX2-only CPUs, where it "
                             "warns; float16 is for CUDA and warns on CPUs without AVX-512 FP16; float32 on a CPU "
                             "runs oneDNN-packed layers)")
    parser.add_argument("--quantize", choices=MODES,
                        help="int8 linear layers, dynamic activations (CPU: oneDNN where it has VNNI, else fbgemm)")


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model :func:`add_model_args`' flags name; raises :class:`ModelArgumentError` unless exactly one of
    ``--model`` / ``--random-init`` is given. ``--quantize`` / ``--dtype`` are recorded in ``record``."""
    loaded = build_model(args.model, args.random_init, getattr(args, "text", None), getattr(args, "tokenizer", None),
                         getattr(args, "seed", 0))
    dtype, quantize = getattr(args, "dtype", "float32"), getattr(args, "quantize", None)
    loaded.record.update({k: v for k, v in (("dtype", dtype), ("quantize", quantize)) if v not in (None, "float32")})
    return loaded


def add_output_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    *,
    required: bool = False,
    default: str | None = None,
) -> None:
    """``-o/--out DIR`` (``args.out``, a Path or None), the output flag of every command."""
    parser.add_argument("-o", "--out", dest="out", metavar="DIR", type=Path, required=required,
                        default=None if default is None else Path(default), help=help)
