"""Command-line arguments the TIPS tools share, with one meaning everywhere (``tips-extract``, ``tips-predict``,
every ``tips-probe`` subcommand). Public: applications build their parsers from these too.

    parser = argparse.ArgumentParser(...)
    add_model_args(parser)            # --model | --random-init, --text, --tokenizer, --seed, --dtype, --quantize
    add_output_arg(parser, "folder for the features")   # -o/--out DIR
    args = parser.parse_args()
    loaded = model_from_args(args)    # LoadedModel(model, name, record); ModelArgumentError if neither/both
    model = prepare_for_inference(loaded.model, resolve_device(args.device), args.quantize)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models.tips import TIPS
from .precision import add_inference_args
from .tokenizers import Tokenizer, build_tokenizer

MODEL_HELP = ("checkpoint file or folder, official vision .npz, Hugging Face folder, or an official model name "
              "(e.g. tips-v2-b14); anything tips.load reads")
RANDOM_INIT_HELP = ("a randomly initialised model of this variant (tiny, tiny_p8, s14, b14, ...): a baseline, "
                    "no download")
TEXT_HELP = "official text-tower .npz (or Tipsv2TextModel folder) that goes with an official vision file"
TOKENIZER_HELP = "'bpe' or a SentencePiece .model file (default: what the checkpoint carries)"
RANDOM_TOKENIZER_HELP = ("; with --random-init default the variant's, else bpe, and the text tower takes the "
                         "tokenizer's vocabulary size")
MODEL_CHOICE_ERROR = "give exactly one of --model (a checkpoint or official model name) and --random-init VARIANT"


class ModelArgumentError(ValueError):
    """``--model`` and ``--random-init`` were both given, or neither."""


@dataclass
class LoadedModel:
    """The model the arguments name (eval mode, on the CPU, not yet quantized) and where it came from.

    name: a short text for file metadata (``random-init:tiny:seed=0`` or the ``--model`` value);
    record: JSON-ready provenance for result files: ``{"random_init", "tokenizer", "seed"}`` or
    ``{"source", "text", "tokenizer"}``, plus ``dtype`` / ``quantize`` when not at full precision.
    """

    model: TIPS
    name: str
    record: dict[str, Any]


def add_model_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    inference: bool = True,
    seed_help: str = "seed of --random-init (default 0)",
) -> None:
    """``--model`` | ``--random-init`` (one of them, checked by :func:`model_from_args`), ``--text``,
    ``--tokenizer``, ``--seed`` and, with ``inference``, ``--dtype`` / ``--quantize``
    (:func:`tips.add_inference_args`)."""
    group = parser.add_argument_group("model") if isinstance(parser, argparse.ArgumentParser) else parser
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--model", metavar="CKPT", help=MODEL_HELP)
    choice.add_argument("--random-init", metavar="VARIANT", help=RANDOM_INIT_HELP)
    group.add_argument("--text", metavar="NPZ", help=TEXT_HELP)
    group.add_argument("--tokenizer", help=TOKENIZER_HELP + RANDOM_TOKENIZER_HELP)
    group.add_argument("--seed", type=int, default=0, help=seed_help)
    if inference:
        add_inference_args(group)


def random_model(variant: str, tokenizer: str | os.PathLike | Tokenizer | None = None, seed: int = 0) -> TIPS:
    """``tips.create_model(variant)`` in eval mode with weights drawn from ``seed`` (the global RNG is untouched).

    tokenizer: default the variant's, else ``"bpe"``; the text vocabulary is sized to the tokenizer. The image
    tower is built first, so its weights depend only on the variant and the seed.
    """
    from .models.factory import create_model

    tok = build_tokenizer(tokenizer if tokenizer is not None else variant_tokenizer(variant))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(variant, tokenizer=tok, **{"text.vocab_size": tok.vocab_size})
    return model.eval()


def build_model(
    model: TIPS | str | os.PathLike | None = None,
    random_init: str | None = None,
    text: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Exactly one of ``model`` (a TIPS model or anything :func:`tips.load` reads) and ``random_init`` (a variant)."""
    if (model is None) == (random_init is None):
        raise ModelArgumentError(MODEL_CHOICE_ERROR)
    if random_init is not None:
        tok = tokenizer if tokenizer is not None else variant_tokenizer(random_init)
        record = {"random_init": random_init, "tokenizer": _describe(tok), "seed": seed}
        return LoadedModel(random_model(random_init, tok, seed), f"random-init:{random_init}:seed={seed}", record)
    if isinstance(model, TIPS):
        return LoadedModel(model.eval(), f"{model.cfg.variant} (in memory)", {"source": "in memory"})
    from .loading import load

    record = {"source": _describe(model), "text": _describe(text), "tokenizer": _describe(tokenizer)}
    return LoadedModel(load(model, text=text, tokenizer=tokenizer), str(model), record)


def variant_tokenizer(variant: str) -> str:
    """The tokenizer a random ``variant`` gets without ``--tokenizer``: the variant's own, else ``"bpe"``."""
    from .models.variants import get_variant

    return get_variant(variant).tokenizer or "bpe"


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model :func:`add_model_args`' flags name; raises :class:`ModelArgumentError` unless exactly one of
    ``--model`` / ``--random-init`` is given. Apply ``--quantize`` / ``--dtype`` with :func:`tips.prepare_for_inference`
    and :func:`tips.autocast`; they are recorded in ``record``."""
    loaded = build_model(args.model, args.random_init, getattr(args, "text", None), getattr(args, "tokenizer", None),
                         getattr(args, "seed", 0))
    dtype, quantize = getattr(args, "dtype", "float32"), getattr(args, "quantize", None)
    loaded.record.update({k: v for k, v in (("dtype", dtype), ("quantize", quantize)) if v not in (None, "float32")})
    return loaded


def _describe(value: Any) -> str | None:
    """A path as an absolute path when it exists (results stay meaningful from another folder), else as given."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        return getattr(value, "kind", type(value).__name__)  # a tokenizer object
    return str(Path(value).resolve()) if Path(value).exists() else str(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``--device``: ``auto`` (or None) is CUDA when available, else the CPU; anything else as torch reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def add_output_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    *,
    required: bool = False,
    default: str | None = None,
    aliases: tuple[str, ...] = (),
    legacy_positional: bool = False,
) -> None:
    """``-o/--out DIR`` (``args.out``, a Path or None), the output flag of every command; ``aliases`` keeps an
    older spelling working (``--output``). ``legacy_positional``: the folder may also come as a bare last argument,
    as it did before ``-o/--out`` (not shown in the help); read it with :func:`output_dir`."""
    parser.add_argument("-o", "--out", *aliases, dest="out", metavar="DIR", type=Path, required=required,
                        default=None if default is None else Path(default), help=help)
    if legacy_positional:
        parser.add_argument("out_positional", nargs="?", type=Path, metavar="OUT", help=argparse.SUPPRESS)


def output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The output folder of ``-o/--out`` or of the bare legacy argument; a usage error without one or with two."""
    bare = getattr(args, "out_positional", None)
    if args.out is not None and bare is not None and args.out != bare:
        parser.error(f"two output folders given: -o {args.out} and {bare}")
    if args.out is None and bare is None:
        parser.error("give the output folder: -o/--out DIR")
    return args.out if args.out is not None else bare
