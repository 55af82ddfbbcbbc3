"""``tips-scenes``: write the embedded dataset (pretraining shards + probe split) to a directory.

Layout (docs/data_format.md):
    DIR/manifest.json                         arguments of the finished run (written last: the completion mark)
    DIR/pretrain/shard-000000.tar …           webdataset: __key__, jpg|png, txt (alt-text), json (captions, …),
                                              normals.png with --pretrain-normals
    DIR/pretrain/manifest.json                shards and per-shard counts
    DIR/probe/classes.json                    class names, is_object, depth range, ignore index
    DIR/probe/{train,val}/{key}.png           RGB
    DIR/probe/{train,val}/{key}.depth.png     uint16 millimetres of z-depth, 0 = invalid (sky / too far)
    DIR/probe/{train,val}/{key}.seg.png       uint8 class ids
    DIR/probe/{train,val}/{key}.normals.png   uint16 RGB camera-frame unit normals (x right, y up, z forward):
                                              channel = round((n + 1) / 2 * 65535), (0, 0, 0) = no surface
    DIR/probe/{train,val}/captions.jsonl      key, alt_text, synthetic_captions per image
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tips.cli.errors import CliParser, add_debug_arg, renamed, run_main

from .generate import render_scene, scene_seed
from .render import CLASS_NAMES, DEPTH_MIN, MAX_DEPTH

VERSION = 2  # bump when the renderer or captions change, so old outputs are regenerated
SOURCE = "tips-scenes"
IGNORE_INDEX = 255
Task = tuple[str, int, int, int, str, bool]  # (split, index, run seed, size, image format, pretrain normals)


def sample_key(split: str, index: int) -> str:
    return f"scene-{index:06d}" if split == "pretrain" else f"{split}-{index:06d}"


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """(H, W[, 3]) uint8 or uint16 array → encoded bytes (``jpg`` at quality 95, ``png`` at fast compression)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """(H, W) float metres → (H, W) uint16 millimetres; 0 stays 0 (invalid)."""
    return np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)


def make_sample(task: Task) -> dict:
    """Render one scene and encode it for its split (runs in the worker processes)."""
    from tips.io import encode_png16, normals_to_uint16  # imported by main() before the workers fork

    split, index, seed, size, fmt, pretrain_normals = task
    image_seed = scene_seed(seed, split, index)
    scene = render_scene(image_seed, size)
    meta = {"synthetic_captions": scene.captions, "source": SOURCE, "seed": image_seed, "index": index}
    key = sample_key(split, index)
    normals = encode_png16(normals_to_uint16(scene.normals), level=3) if split != "pretrain" or pretrain_normals else None
    if split == "pretrain":
        sample = {"__key__": key, fmt: encode_image(scene.image, fmt), "txt": scene.alt_text.encode(),
                  "json": json.dumps(meta).encode()}
        return {**sample, "normals.png": normals} if pretrain_normals else sample
    return {
        "key": key,
        "png": encode_image(scene.image, "png"),
        "depth.png": encode_image(depth_to_millimetres(scene.depth), "png"),
        "seg.png": encode_image(scene.seg, "png"),
        "normals.png": normals,
        "record": {"key": key, "alt_text": scene.alt_text, **meta},
    }


def run_record(args: argparse.Namespace) -> dict:
    """What identifies a run's output: everything that changes a byte of it."""
    return {"version": VERSION, "num_pretrain": args.num_pretrain, "num_train": args.num_train,
            "num_val": args.num_val, "size": args.size, "seed": args.seed, "shard_size": args.shard_size,
            "image_format": args.image_format, "pretrain_normals": args.pretrain_normals}


def is_up_to_date(out: Path, record: dict) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text()).get("args") == record


def classes_json() -> dict:
    from tips.io import NORMALS_ENCODING

    return {
        "classes": [{"id": i, "name": name, "is_object": i > 1} for i, name in enumerate(CLASS_NAMES)],
        "depth_min": DEPTH_MIN,
        "depth_max": MAX_DEPTH,
        "depth_scale": 0.001,
        "depth_kind": "z-depth along the optical axis, metres = png value * depth_scale, 0 = invalid",
        "ignore_index": IGNORE_INDEX,
        "normals_frame": "camera: x right, y up, z forward (optical axis); surfaces facing the camera have n_z < 0",
        "normals_encoding": NORMALS_ENCODING,
    }


def remove_previous(out: Path) -> None:
    """Delete what an earlier run wrote (only our own file patterns), the completion mark first."""
    for path in [out / "manifest.json", out / "pretrain" / "manifest.json", out / "probe" / "classes.json"]:
        path.unlink(missing_ok=True)
    for path in (out / "pretrain").glob("shard-*.tar*"):
        path.unlink()
    for split in ("train", "val"):
        for path in (out / "probe" / split).glob("*"):
            if path.suffix in (".png", ".jsonl"):
                path.unlink()


def write_pretrain(out: Path, samples: Iterator[dict], count: int, shard_size: int) -> list[dict]:
    """Write ``count`` samples into tar shards of ``shard_size``; returns [{"name", "count"}] per shard."""
    from tips.io import write_shard  # here, not at the top: ``tips`` imports torch, which the no-op path avoids

    directory = out / "pretrain"
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard, start in enumerate(range(0, count, shard_size)):
        n = min(shard_size, count - start)
        name = f"shard-{shard:06d}.tar"
        write_shard(directory / name, (next(samples) for _ in range(n)))  # fixed tar metadata: identical reruns
        shards.append({"name": name, "count": n})
    return shards


def write_probe_split(out: Path, split: str, samples: Iterator[dict], count: int) -> None:
    directory = out / "probe" / split
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for _ in range(count):
        sample = next(samples)
        for ext in ("png", "depth.png", "seg.png", "normals.png"):
            (directory / f"{sample['key']}.{ext}").write_bytes(sample[ext])
        records.append(json.dumps(sample["record"]))
    (directory / "captions.jsonl").write_text("".join(r + "\n" for r in records))


def keep_buffers_in_heap() -> None:
    """Stop glibc from mmap-ing and unmapping each ~200 kB ray buffer: a quarter of the time went to the kernel.

    Optional tuning: a no-op wherever glibc's ``mallopt`` is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 24)  # M_MMAP_THRESHOLD: 16 MiB
        libc.mallopt(-1, 1 << 27)  # M_TRIM_THRESHOLD: 128 MiB
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def sample_map(workers: int) -> Iterator[Callable[[Callable, list], Iterator]]:
    """An order-preserving lazy ``map``: from a process pool when ``workers`` > 1, else the builtin."""
    if workers <= 1:
        yield map
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, initializer=keep_buffers_in_heap) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=8)


EXAMPLES = """\
examples:
  # the demo's dataset: 2,048 pretraining scenes in 4 shards and a 256/64 probe split at 128 px
  tips-scenes -o data/scenes --num-pretrain 2048 --num-train 256 --num-val 64 --resolution 128 --shard-size 512
  # a probe split only, small and fast (no pretraining shards)
  tips-scenes -o data/scenes-probe --num-pretrain 0 --num-train 64 --num-val 16 --resolution 64
"""


def build_parser() -> argparse.ArgumentParser:
    # -o/--out written out here rather than with tips.cli.model_args: importing tips loads torch, which the no-op
    # (up-to-date) path of this command avoids.
    parser = CliParser(prog="tips-scenes", description=(__doc__ or "").split("\n")[0].replace("``", ""), epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="DIR",
                        help="output folder (pretrain/ shards, probe/ split, manifest.json)")
    parser.add_argument("--num-pretrain", type=int, default=5000, help="images in the pretraining shards")
    parser.add_argument("--num-train", type=int, default=500, help="images in the probe train split")
    parser.add_argument("--num-val", type=int, default=100, help="images in the probe val split")
    parser.add_argument("--resolution", dest="size", type=int, default=224, help="image side in pixels")
    renamed(parser, "--size", "--resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per pretraining shard")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="pretraining image encoding")
    parser.add_argument("--pretrain-normals", action="store_true",
                        help="also store normals.png (uint16 RGB, as in the probe split) in the pretraining shards")
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    renamed(parser, "--workers", "--num-workers")
    parser.add_argument("--force", action="store_true", help="regenerate even if the output is up to date")
    add_debug_arg(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.num_pretrain, args.num_train, args.num_val) < 0 or args.size < 8 or args.shard_size < 1:
        parser.error("counts must be ≥ 0, --resolution ≥ 8 and --shard-size ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """``tips-scenes``; 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    args = parse_args(argv)
    return run_main("tips-scenes", lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    out: Path = args.out
    record = run_record(args)
    if not args.force and is_up_to_date(out, record):
        print(f"tips-scenes: {out} is up to date ({args.num_pretrain} pretraining, {args.num_train} train, "
              f"{args.num_val} val images); use --force to regenerate")
        return 0
    remove_previous(out)
    import tips.io  # noqa: F401  (here, not at the top: ``tips`` imports torch, which the no-op path avoids)

    keep_buffers_in_heap()
    splits = {"pretrain": args.num_pretrain, "train": args.num_train, "val": args.num_val}
    tasks = [(split, i, args.seed, args.size, args.image_format, args.pretrain_normals)
             for split, n in splits.items() for i in range(n)]
    bar = tqdm(total=len(tasks), desc="tips-scenes", unit="img")
    with sample_map(min(args.num_workers, len(tasks))) as lazy_map, bar:
        samples = _counting(lazy_map(make_sample, tasks), bar)
        shards = write_pretrain(out, samples, args.num_pretrain, args.shard_size)
        (out / "probe").mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            write_probe_split(out, split, samples, splits[split])
    (out / "probe" / "classes.json").write_text(json.dumps(classes_json(), indent=2))
    pretrain_manifest = {"source": SOURCE, "shards": shards, "num_samples": args.num_pretrain, "args": record}
    (out / "pretrain" / "manifest.json").write_text(json.dumps(pretrain_manifest, indent=2))
    (out / "manifest.json").write_text(json.dumps({"source": SOURCE, "args": record, "splits": splits}, indent=2))
    print(f"tips-scenes: wrote {len(shards)} shards and a {args.num_train}/{args.num_val} probe split to {out}")
    return 0


def _counting(samples: Iterable[dict], bar: tqdm) -> Iterator[dict]:
    for sample in samples:
        bar.update(1)
        yield sample
