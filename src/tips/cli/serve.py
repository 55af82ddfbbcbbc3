"""``tips-serve``: an OpenAI-compatible embeddings server for a TIPS model, with dense predictions (the DPT heads
given), open-vocabulary segmentation, search over a ``tips-index`` folder, Prometheus metrics and a page at ``/``
(docs/serving.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..formats.heads import load_head
from ..formats.optional import require
from ..index import Index, check_same_space
from ..index.queries import model_space
from ..inference.loaded import resolve_device
from ..inference.precision import prepare_for_inference
from ..models.dpt import TASKS, build_head
from ..serve import Limits, ServedIndex, ServedModel, ServeOptions, create_app
from .errors import CliParser, UsageError, add_debug_arg, run_main
from .model_args import add_model_args, model_from_args

EXAMPLES = """\
examples:
  # the official model with a depth head and an index, on 127.0.0.1:8000
  tips-serve --model tips-v2-b14 --head tips-v2-b14-depth --index index/
  # an offline demo: random weights, every dense endpoint, batching off
  tips-serve --random-init tiny --random-head depth --random-head normals --max-batch 1
  # (docs/serving.md: requests, limits, metrics, a reverse proxy)
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-serve", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    m = p.add_argument_group("what is served")
    m.add_argument("--head", action="append", default=[], metavar="HEAD",
                   help="a DPT head (file, folder or official name, e.g. tips-v2-b14-depth); repeatable, one per task")
    m.add_argument("--random-head", action="append", default=[], choices=TASKS, metavar="TASK",
                   help=f"a random head for TASK ({', '.join(TASKS)}), for demos; repeatable")
    m.add_argument("--index", type=Path, metavar="DIR", help="a tips-index folder built with this model: /v1/search")
    m.add_argument("--served-name", metavar="NAME", help="the name requests give as 'model' (default: --model as "
                   "given, or random-init:VARIANT)")
    m.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    s = p.add_argument_group("network")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "put a reverse proxy in front rather than binding 0.0.0.0)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    b = p.add_argument_group("batching and limits")
    d, lim = ServeOptions(), Limits()
    b.add_argument("--max-batch", type=int, default=d.max_batch, help=f"items per forward (default {d.max_batch}; "
                   "1 turns batching off)")
    b.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch's first item waits for "
                   f"others (default {d.max_wait_ms:g})")
    b.add_argument("--max-queue", type=int, default=d.max_queue, help=f"items waiting before 503 (default {d.max_queue})")
    b.add_argument("--timeout-s", type=float, default=d.timeout_s, help=f"a request's time limit (default {d.timeout_s:g})")
    b.add_argument("--max-body-bytes", type=int, default=lim.max_body_bytes, help=f"default {lim.max_body_bytes}")
    b.add_argument("--max-image-pixels", type=int, default=lim.max_image_pixels, help=f"default {lim.max_image_pixels}")
    b.add_argument("--max-inputs", type=int, default=lim.max_inputs, help=f"items per request (default {lim.max_inputs})")
    b.add_argument("--max-text-chars", type=int, default=lim.max_text_chars, help=f"default {lim.max_text_chars}")
    b.add_argument("--max-classes", type=int, default=lim.max_classes, help=f"default {lim.max_classes}")
    b.add_argument("--max-k", type=int, default=lim.max_k, help=f"hits per search (default {lim.max_k})")
    add_debug_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1..65535")
    for flag in ("max_batch", "max_queue", "max_body_bytes", "max_image_pixels", "max_inputs", "max_text_chars",
                 "max_classes", "max_k"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected an integer >= 1")
    if args.max_wait_ms < 0 or args.timeout_s <= 0:
        parser.error("--max-wait-ms must be >= 0 and --timeout-s > 0")
    return run_main(parser.prog, lambda: serve(args), debug=args.debug)


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    limits = Limits(max_body_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels,
                    max_inputs=args.max_inputs, max_text_chars=args.max_text_chars, max_classes=args.max_classes,
                    max_k=args.max_k)
    return ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                        timeout_s=args.timeout_s, limits=limits)


def served_index(folder: Path, model, name: str) -> ServedIndex:
    """A tips-index folder as the server searches it: queries embedded in the index's space (refused otherwise)."""
    index = Index.open(folder)
    width = index.space.width if index.space.truncated_from else None
    space = model_space(model, name, index.space.kind, width)
    check_same_space(index.space, space, str(folder))  # at start, not at the first query
    resolution = index.info.get("extraction", {}).get("resolution") or model.image_size

    def search(queries, k):
        found = index.search(queries, k, space)
        return found.scores, found.rows

    return ServedIndex(search=search, row=lambda i: index.rows.slice(i, 1).to_pylist()[0], kind=index.space.kind,
                       width=index.space.width, resolution=int(resolution), count=len(index))


def heads_from_args(args: argparse.Namespace, width: int) -> dict:
    heads = {}
    for source in args.head:
        head = load_head(source)
        if head.task in heads:
            raise UsageError(f"--head {source}: a {head.task} head is already given; one head per task")
        heads[head.task] = head
    for i, task in enumerate(args.random_head):
        if task in heads:
            raise UsageError(f"--random-head {task}: a {task} head is already given; one head per task")
        import torch

        torch.manual_seed(args.seed + i)
        heads[task] = build_head(task, width).eval()
    return heads


def serve(args: argparse.Namespace) -> int:
    """Check what is given, load the model, heads and index, then run uvicorn until interrupted."""
    uvicorn = require("uvicorn", "tips-serve", extra="serve")
    if args.index is not None and not args.index.is_dir():
        raise FileNotFoundError(f"--index {args.index}: no such folder (build one with tips-index)")
    loaded = model_from_args(args)
    device = resolve_device(args.device)
    model = prepare_for_inference(loaded.model, device, args.quantize, args.dtype)
    heads = {task: head.to(device) for task, head in heads_from_args(args, model.width).items()}
    name = args.served_name or loaded.name
    index = served_index(args.index, model, loaded.name) if args.index is not None else None
    served = ServedModel(model, name, heads, index, random="random_init" in loaded.record or bool(args.random_head),
                         dtype=args.dtype)
    app = create_app(served, options_from_args(args))
    print(f"tips-serve: {name} on http://{args.host}:{args.port} (heads: {', '.join(sorted(heads)) or 'none'}; "
          f"index: {args.index or 'none'}; {served.precision})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
