"""``tips-probe {segmentation,depth,normals,zero-shot,retrieval,knn,zero-shot-seg,compression,retention,compare}``: measure frozen
TIPS features.

Every subcommand takes the model flags of :mod:`tips.cli.model_args` (``--model`` | ``--random-init``, ``--text``,
``--tokenizer``, ``--seed``, ``--dtype``, ``--quantize``), ``-o/--out DIR``, and ``--config YAML`` followed by
``key=value`` overrides: for the dense probes the keys of the probe config (``optim.lr=3e-4 depth.bins=128``,
``configs/probe/*.yaml``), for the others the flags' long names (``cls=syn batch_size=16``). The global
subcommands live in ``tips_eval.zero_shot``, ``tips_eval.retrieval``, ``tips_eval.knn``, ``tips_eval.zero_shot_seg``, ``tips_eval.compression``.
Every finished run appends a line to ``results.jsonl`` in its ``--out`` folder; ``tips-probe compare`` puts them in
one table (:mod:`tips_eval.compare`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import tips
from tips.cli.allocator import tune_cpu_allocator
from tips.cli.model_args import add_model_args, add_output_arg, model_from_args
from tips.cli.errors import CliParser, add_debug_arg, renamed, run_main
from tips.inference.loaded import resolve_device
from tips.io.recipes import describe_recipes

from .options import OptionError, examples

FORWARDED = {"zero-shot": "tips_eval.zero_shot", "retrieval": "tips_eval.retrieval", "knn": "tips_eval.knn",
             "zero-shot-seg": "tips_eval.zero_shot_seg", "compression": "tips_eval.compression",
             "retention": "tips_eval.retention"}
SUMMARY = "tips-probe: measure frozen TIPS features (dense probes, zero-shot, retrieval, kNN, compression, retention)."
SUBCOMMAND_HELP = {
    "zero-shot": "zero-shot classification of a class-per-folder image set",
    "retrieval": "image-to-text and text-to-image retrieval from image-caption pairs",
    "knn": "weighted kNN of a val image folder against a train folder",
    "zero-shot-seg": "zero-shot (open-vocabulary) segmentation benchmarks",
    "compression": "global and dense metrics across precisions and embedding widths",
    "retention": "how much of the dense probes a fine-tuned checkpoint keeps",
}
DENSE = ("segmentation", "depth", "normals")
DENSE_EXAMPLES = {
    "segmentation": "tips-probe segmentation --random-init tiny_p8 --dataset scenes:data/scenes/probe --resolution 64 "
                    "--object-classes -o results optim.iterations=100",
    "depth": "tips-probe depth --random-init tiny_p8 --dataset scenes:data/scenes/probe --resolution 64 --mask objects "
             "-o results optim.iterations=100 depth.bins=64",
    "normals": "tips-probe normals --random-init tiny_p8 --dataset scenes:data/scenes/probe --resolution 64 "
               "-o results optim.iterations=100",
}


def dense_parser(task: str) -> argparse.ArgumentParser:
    official = {"segmentation": "--dataset ade20k:ADEChallengeData2016 --protocol dinov2",
                "depth": "--dataset nyu:nyu_depth_v2_labeled.mat --config probe/nyu_lin1",
                "normals": "--dataset nyu-normals:NYUv2 --head lin1"}[task]
    epilog = examples(DENSE_EXAMPLES[task], "# an official model on a public benchmark",
                      f"tips-probe {task} --model tips-v2-b14 {official} -o results")
    p = CliParser(prog=f"tips-probe {task}", description=f"{task} probe on frozen features",
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, seed_help="seed of the probe and of --random-init (default 0)")
    p.add_argument("--dataset", required=True,
                   help="scenes:DIR | folder:ROOT | ade20k:ROOT | voc:ROOT | nyu:MAT[?splits=FILE] | nyu-raw:ROOT | "
                        "nyu-normals:ROOT | navi:ROOT")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--config", metavar="YAML",
                   help="probe config: a file or a bundled name such as probe/nyu_lin1 (tips-probe --list-configs); "
                        "flags and KEY=VALUE overrides win over it")
    p.add_argument("--protocol", choices=("fast", "dinov2"))
    p.add_argument("--resolution", help="N or HxW fed to the model (fast protocol), multiples of the patch size")
    p.add_argument("--layers", help="last | last4 | quarters | 2,5,8,11")
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    add_output_arg(p, "folder for the JSON, markdown and PNG (default results)", default="results")
    p.add_argument("--cache-dir", help="feature cache (default $TIPS_CACHE/probe-features or ~/.cache/tips/...)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1 …")
    p.add_argument("--num-workers", type=int, help="data-loading processes for feature extraction")
    renamed(p, "--workers", "--num-workers")
    p.add_argument("--num-vis", type=int, help="validation images in the picture")
    p.add_argument("--no-progress", action="store_true")
    add_debug_arg(p)
    p.add_argument("--dpt-preset", choices=("tips", "probe3d"),
                   help="with --head dpt: the official TIPSv2 decoder (default) or probe3d's DPT probe")
    if task == "segmentation":
        p.add_argument("--head", choices=("linear", "dpt"), help="linear (default) or a DPT decoder")
        p.add_argument("--object-classes", action="store_true", help="also report mIoU over the dataset's objects")
        p.add_argument("--classes", help="comma-separated class names for a subset mIoU")
    elif task == "normals":
        p.add_argument("--head", choices=("lin1", "lin4", "dpt"))
        p.add_argument("--loss", choices=("angular", "uncertainty"), help="uncertainty: probe3d's κ-weighted loss")
        p.add_argument("--mask", choices=("none", "objects"))
    else:
        p.add_argument("--head", choices=("lin1", "lin4", "dpt"))
        p.add_argument("--bins", type=int)
        p.add_argument("--spacing", choices=("uniform", "log"))
        p.add_argument("--mask", choices=("none", "objects"))
        p.add_argument("--flip-tta", action="store_true", default=None)
        p.add_argument("--eigen-crop", choices=("auto", "on", "off"))
        p.add_argument("--depth-range", metavar="MIN,MAX", help="bins and valid range in metres (default: dataset's)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="probe-config overrides, applied last, e.g. optim.lr=3e-4 depth.bins=64")
    return p


def flag_overrides(task: str, args: argparse.Namespace) -> dict:
    """Command-line flags as dotted config keys (None = not given)."""
    top = {
        "task": task, "protocol": args.protocol, "seed": args.seed, "features.resolution": args.resolution,
        "features.layers": args.layers, "optim.iterations": args.iterations, "optim.batch_size": args.batch_size,
        "optim.lr": args.lr, "num_workers": args.num_workers, "num_vis": args.num_vis,
        "progress": False if args.no_progress else None, "dpt.preset": args.dpt_preset,
        "features.dtype": None if args.dtype == "float32" else args.dtype,
    }
    if task == "segmentation":
        top["seg.head"] = args.head
        top["seg.object_classes"] = True if args.object_classes else None
        top["seg.classes"] = args.classes.split(",") if args.classes else None
    elif task == "normals":
        top.update({"normals.head": args.head, "normals.loss": args.loss, "normals.mask": args.mask})
    else:
        lo, hi = (args.depth_range.split(",") if args.depth_range else (None, None))
        top.update({"depth.head": args.head, "depth.bins": args.bins, "depth.spacing": args.spacing,
                    "depth.mask": args.mask, "depth.flip_tta": args.flip_tta, "depth.eigen_crop": args.eigen_crop,
                    "depth.depth_min": lo, "depth.depth_max": hi})
    return top


def build_model(args: argparse.Namespace, device: str) -> tuple[tips.TIPS, dict, str]:
    """The model, its identity for the feature cache, and a short label for file names and tables."""
    from .features import model_identity

    model = model_from_args(args).model
    identity, label = model_identity(args.model, args.random_init, args.seed, args.quantize, args.dtype)
    return tips.prepare_for_inference(model, device, args.quantize, args.dtype), identity, label


def run_dense(task: str, argv: list[str]) -> int:
    from .probes.config import load_probe_config
    from .probes.run import run_probe

    from .datasets import parse_spec

    parser = dense_parser(task)
    args = parser.parse_args(argv)
    try:  # a mistake in the file, a flag or an override is a usage error, as in the global tasks
        cfg = load_probe_config(args.config, args.overrides, **flag_overrides(task, args))
    except OptionError as e:
        parser.error(str(e))
    _, data_path, _ = parse_spec(args.dataset)
    if not data_path.exists():  # before the model is built (an official one downloads)
        raise FileNotFoundError(f"--dataset {args.dataset}: {data_path} does not exist")
    device = str(resolve_device(args.device))
    model, identity, label = build_model(args, device)
    result = run_probe(model, args.dataset, cfg, args.out, identity, label, args.cache_dir, args.train_split,
                       args.val_split, command=["tips-probe", task, *argv])
    print(result["markdown"])
    for kind, path in result.get("paths", {}).items():
        print(f"wrote {kind}: {path}")
    return 0


def top_parser() -> argparse.ArgumentParser:
    retrieval = "tips-probe retrieval --random-init tiny_p8 --data data/scenes/probe/val --resolution 64 -o results"
    epilog = examples(DENSE_EXAMPLES["segmentation"], retrieval)
    p = CliParser(prog="tips-probe", description=SUMMARY, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list-configs", action="store_true", help="list the bundled recipes (--config NAME) and exit")
    sub = p.add_subparsers(dest="command",
                           metavar="{segmentation,depth,normals,zero-shot,retrieval,knn,zero-shot-seg,compression,retention,compare}")
    for name in DENSE:
        sub.add_parser(name, help=f"{name} probe on frozen features (tips-probe {name} --help)", add_help=False)
    for name, module in FORWARDED.items():
        sub.add_parser(name, help=f"{SUBCOMMAND_HELP[name]} (tips-probe {name} --help)", add_help=False)
    sub.add_parser("compare", help="one table of probe results: a row per model, a column per task/metric "
                                   "(tips-probe compare --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """``tips-probe SUBCOMMAND ...``; 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    tune_cpu_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    commands = (*DENSE, *FORWARDED)
    if argv[:1] == ["--list-configs"]:
        print(describe_recipes())
        return 0
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if not argv:
        parser.error(f"give a subcommand: {', '.join(commands)}")
    if argv[0] == "compare":  # reads result files: no model, no config
        from . import compare

        return run_main("tips-probe compare", lambda: compare.main(argv[1:]), debug="--debug" in argv)
    if argv[0] not in commands:
        parser.error(f"no subcommand {argv[0]!r}; choose one of {', '.join(commands)}, compare")
    command, rest = argv[0], argv[1:]
    if command in DENSE:
        return run_main(f"tips-probe {command}", lambda: run_dense(command, rest), debug="--debug" in rest)
    module = importlib.import_module(FORWARDED[command])
    return run_main(f"tips-probe {command}", lambda: int(module.main(rest) or 0), debug="--debug" in rest)


if __name__ == "__main__":
    raise SystemExit(main())
