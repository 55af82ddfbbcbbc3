"""Feature extraction: ``tips.extract(sources, output, model, ExtractOptions(...))``, which ``tips-extract`` runs.

Output folder layout (docs/extraction.md): per chunk of work ``features-{i:05d}.safetensors`` and the npy/parquet
files of :mod:`tips.inference.chunk_writer`, with the chunk's done marker; once every chunk is done ``ids.jsonl``,
``index.json`` (file, start row, count per chunk), ``skipped.json`` ([{id, reason}]), optionally ``pca.png`` and
``text_embeddings.safetensors`` with ``texts.json``, and last ``manifest.json``. :func:`load_features` also reads
the single-file layout of earlier releases (``features.safetensors`` + ``ids.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..io.atomic import atomic_path, write_text_atomic
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.sources import ImageRef, find_images
from ..io.work_chunks import chunks_for_process, is_done, matches, process_place, read_marker, write_marker
from ..models.dtypes import resolve_dtype
from ..models.preprocess import Preprocess
from ..models.tips import TIPS
from ..models.vision import ImageFeatures
from . import job_folder
from . import encoding
from .encoding import ImageProgress
from .chunk_writer import ChunkWriter, chunk_file
from .embedding_files import vector_file, write_rows, write_vectors
from .images import Decoded, ImageDataset, collate_decoded
from .regions import encode_with_regions
from .loaded import LoadedModel, as_loaded, resolve_device
from .pca import save_pca_picture
from .precision import autocast, prepare_for_inference
from .tiling import RoundToPatch, Tiling, blend, plan_tiles
from .upsample import Upsampler, check_factor, upsampled_size

FORMAT = "tips-features"
DEFAULT_CHUNK = 1024  # images per chunk of files (a tar shard is one chunk): the unit a rerun skips


class NoReadableImages(RuntimeError):
    """Every image of the source was skipped; ``skipped.json`` in the output folder says why."""


@dataclass
class ExtractResult:
    """What a run produced. ``skipped`` holds (id, reason) pairs; ``files`` every path written."""

    ids: list[str]
    skipped: list[tuple[str, str]]
    files: list[Path]
    seconds: float
    pca: Path | None = None
    text: Path | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-image shape of each stored key
    encoded_here: int = 0  # images this process encoded (0 when every chunk was already done)
    pending: str | None = None  # set when other processes' chunks are not done yet: the folder is not complete

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def images_per_second(self) -> float:
        return self.encoded_here / max(self.seconds, 1e-9)

    def summary(self) -> str:
        if self.pending:
            return f"{self.encoded_here} images encoded here ({self.seconds:.1f} s); {self.pending}"
        lines = [
            f"{self.count} images encoded, {len(self.skipped)} skipped, {self.images_per_second:.1f} images/s "
            f"({self.seconds:.1f} s)"
        ]
        lines += [f"  skipped {i}: {r}" for i, r in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  … and {len(self.skipped) - 20} more skipped (all listed in skipped.json)")
        shapes = ", ".join(f"{k} (h, w, {v[-1]}) per image" if k.endswith(">") else f"{k} {(self.count, *v)}"
                           for k, v in self.shapes.items())
        chunks = [p for p in self.files if p.name.startswith("features-")]
        if chunks:
            folders = sorted({p.parent.name + "/" for p in self.files if p.parent != chunks[0].parent})
            lines.append(f"  wrote {len(chunks)} chunk{'s' * (len(chunks) > 1)} into {chunks[0].parent}: "
                         f"features-*.safetensors [{shapes}], {', '.join(folders)}")
        named = ("pca.png", "text_embeddings.safetensors", "skipped.json")
        lines += [f"  wrote {p}" for p in self.files if p.name in named]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- writing
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


@dataclass
class Features:
    """Features read back by :func:`load_features`: patch_tokens is (N, h, w, D), a list of (h, w, D), or None."""

    ids: list[str]
    cls_alt: torch.Tensor
    cls_syn: torch.Tensor
    patch_tokens: torch.Tensor | list[torch.Tensor] | None


def load_features(out_dir: str | os.PathLike) -> Features:
    """Read an extraction folder (single file or shards) back into memory; an incomplete one (its manifest says
    so, or its files are missing) is refused naming the folder."""
    out_dir = Path(out_dir)
    job_folder.check_complete(out_dir)
    needed = ["index.json", "ids.jsonl"] if (out_dir / "index.json").is_file() else ["features.safetensors", "ids.json"]
    missing = [n for n in needed if not (out_dir / n).is_file()]
    if missing:
        raise job_folder.IncompleteExtraction(f"{out_dir} is not a complete extraction (no {', '.join(missing)}): "
                                              "run tips-extract into it (again) to finish it")
    if (out_dir / "index.json").is_file():
        index = json.loads((out_dir / "index.json").read_text())
        files = [out_dir / s["file"] for s in index["shards"]]
        ids = [json.loads(line) for line in (out_dir / "ids.jsonl").read_text().splitlines() if line]
    else:
        files, ids = [out_dir / "features.safetensors"], json.loads((out_dir / "ids.json").read_text())
    parts = [load_file(str(f)) for f in files]
    stacked = [p["patch_tokens"] for p in parts if "patch_tokens" in p]
    ragged = [p[k] for p in parts for k in sorted(k for k in p if k.startswith("patch_tokens."))]
    return Features(
        ids=ids,
        cls_alt=torch.cat([p["cls_alt"] for p in parts]),
        cls_syn=torch.cat([p["cls_syn"] for p in parts]),
        patch_tokens=torch.cat(stacked) if stacked else (ragged or None),
    )


# ----------------------------------------------------------------------------------------------- model
def check_resolution(resolution: int, patch_size: int) -> None:
    """Raise a ValueError naming the nearest valid sizes when ``resolution`` is not a multiple of the patch."""
    if resolution > 0 and resolution % patch_size == 0:
        return
    lo = max(resolution, 0) // patch_size * patch_size
    nearest = f"{lo} or {lo + patch_size}" if lo >= patch_size else str(patch_size)
    raise ValueError(f"resolution {resolution} is not a multiple of the patch size {patch_size}; nearest valid: {nearest}")


def encode_prompts(model: TIPS, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """prompts (T strings) → text embeddings (T, D) fp32, not normalised."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            outs.append(model.encode_text(list(prompts[i : i + batch_size])).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, model.width)


def _read_prompts(path: str | os.PathLike) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- extract
class BatchEncoder:
    """Writes encoded batches of decoded images and keeps the first ``pca`` images for the picture; a job of
    :func:`run_batches` (``model``, ``dtype``, ``encode``, ``write``)."""

    def __init__(self, model: TIPS, dtype: torch.dtype, writer: ChunkWriter, keep_patches: bool,
                 pool_patches: int | None, pca: int, regions: int | None = None, tiling: Tiling | None = None,
                 upsample: Upsampler | None = None, factor: float = 4.0, tile_batch: int = 8) -> None:
        self.model, self.dtype, self.writer = model, dtype, writer
        self.keep_patches, self.pool_patches, self.pca, self.regions = keep_patches, pool_patches, pca, regions
        self.tiling, self.upsample, self.factor, self.tile_batch = tiling, upsample, factor, tile_batch
        # (id, image (3,H,W), patches (h,w,D), photo (H, W))
        self.pca_items: list[tuple[str, torch.Tensor, torch.Tensor, tuple[int, int] | None]] = []

    def encode(self, model: TIPS, images: torch.Tensor):
        """ImageFeatures, or (ImageFeatures, regions (B, K², D)) with ``regions`` (one pass through the tower)."""
        if self.regions:
            return encode_with_regions(model, images, self.regions)
        if self.tiling is None and self.upsample is None:
            return model.encode_image(images)
        feats = [encode_tiled(model, x, self.tiling, self.upsample, self.factor, self.tile_batch) for x in images]
        return ImageFeatures(*(torch.stack([getattr(f, k) for f in feats])
                               for k in ("cls_alt", "cls_syn", "patch_tokens")))

    def write(self, out, items: list[Decoded]) -> None:
        out, regions = out if self.regions else (out, None)
        for_pca = items[: max(0, self.pca - len(self.pca_items))]
        patches = out.patch_tokens.float().cpu() if self.keep_patches or for_pca else None
        self.pca_items += [(it.id, it.image, p, it.photo_size) for it, p in zip(for_pca, patches if for_pca else [])]
        if self.pool_patches is not None:
            patches = pool_patch_grid(patches, self.pool_patches)
        grid = tuple(out.patch_tokens.shape[1:3])
        self.writer.add([it.id for it in items], out.cls_alt.float().cpu(), out.cls_syn.float().cpu(),
                        patches if self.keep_patches else None, None if regions is None else regions.float().cpu(), grid)


@torch.inference_mode()
def encode_tiled(model: TIPS, image: torch.Tensor, tiling: Tiling | None, upsample: Upsampler | None = None,
                 factor: float = 4.0, batch: int = 8) -> ImageFeatures:
    """One image (3, H, W) → ImageFeatures with a batch of one removed: cls_alt, cls_syn (D,), patch_tokens
    (h', w', D).

    tiling: overlapping tiles blended on the patch grid (:mod:`tips.inference.tiling`), CLS tokens the mean of the
    tiles' (None: the whole image in one pass); upsample: the patch grid resized to ``factor`` times its size,
    guided by the image (:mod:`tips.inference.upsample`). One tile covering the image and no upsampler give
    ``model.encode_image``'s features.
    """
    p = model.patch_size
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    if tiling is None:
        f = model.encode_image(image[None])
        cls_alt, cls_syn, patches = f.cls_alt[0], f.cls_syn[0], f.patch_tokens[0].permute(2, 0, 1)
    else:
        plan = plan_tiles(grid, tiling, p)
        th, tw = plan.tile
        cls: list[tuple[torch.Tensor, torch.Tensor]] = []

        def run(boxes: list[tuple[int, int]]) -> torch.Tensor:  # (n, D, th, tw)
            f = model.encode_image(torch.stack([image[:, y * p:(y + th) * p, x * p:(x + tw) * p] for y, x in boxes]))
            cls.extend(zip(f.cls_alt.float(), f.cls_syn.float()))
            return f.patch_tokens.permute(0, 3, 1, 2)

        patches = blend(plan, run, 1, batch)  # (D, h, w)
        cls_alt, cls_syn = (torch.stack(c).mean(0) for c in zip(*cls))
    if upsample is not None:
        patches = upsample(patches[None].float(), image[None].float(), upsampled_size(*grid, factor))[0]
    return ImageFeatures(cls_alt, cls_syn, patches.permute(1, 2, 0))


def run_batches(loader: Iterable[list[Decoded]], total: int, batch_size: int, job, progress: bool | ImageProgress,
                desc: str = "images") -> list[tuple[str, str]]:
    """Feed decoded images through :func:`tips.inference.encoding.encode_images` in batches of equal image size:
    ``job.encode(job.model, images)`` then ``job.write(output, items)``; returns the skipped (id, reason) pairs.

    Images are bucketed by size, so square mode (one size) keeps the input order; leftovers are flushed at the
    end in the order of their first image. ``progress``: a bool, or an :class:`ImageProgress` to count on.
    """
    skipped: list[tuple[str, str]] = []
    bar = progress if isinstance(progress, ImageProgress) else ImageProgress(total, bool(progress), desc)

    def batches() -> Iterator[tuple[torch.Tensor, list[Decoded]]]:
        buckets: dict[tuple[int, ...], list[Decoded]] = {}
        for chunk in loader:
            for item in chunk:
                if item.image is None:
                    skipped.append((item.id, str(item.error)))
                    bar.write(f"skipped {item.id}: {item.error}")
                    bar.skipped(1)
                    continue
                size = tuple(item.image.shape)
                buckets.setdefault(size, []).append(item)
                if len(buckets[size]) == batch_size:
                    items = buckets.pop(size)
                    yield torch.stack([it.image for it in items]), items
        for size in sorted(buckets, key=lambda k: buckets[k][0].index):
            yield torch.stack([it.image for it in buckets[size]]), buckets[size]

    with bar:
        for out, items in encoding.encode_images(job.model, batches(), bar, job.encode, job.dtype):
            job.write(out, items)
    return skipped


@dataclass(frozen=True)
class ExtractOptions:
    """How :func:`extract` reads, encodes and writes; ``tips-extract`` builds one from its flags.

    resolution: square side (default: the model's native size), or with ``keep_aspect`` the shorter side.
        Square mode keeps the input order. Keep-aspect batches images of equal output size together, so rows
        follow encoding order; ``ids`` always names each row.
    device: default: the given model's device, else CUDA when available; dtype: compute dtype (autocast: fp32
        weights, bf16 matmuls; faster only on CPUs with native bf16 and on CUDA, see ``tips.inference.precision``).
    quantize: ``"int8"``: int8 linear layers with dynamic activations (:func:`tips.quantize`; modifies a given
        model in place).
    patch_tokens: also store patch tokens (N, h, w, D); pool_patches: K averages each patch grid to K x K
        (implies patch tokens); shard_size: images per output file; save_dtype: dtype of the stored features.
    max_pixels: larger images are skipped as decompression bombs (None/0 = no limit).
    texts: a prompts file (one per line) or a list of prompts → ``text_embeddings.safetensors``.
    pca: a PCA picture of the first ``pca`` images (``pca.png``).
    force: the output folder holds another job's extraction: replace it (otherwise refused, naming both jobs).
    regions: K: also store region vectors, the value-readout patch features averaged over a K x K grid and
        normalised, with their cell boxes (``region_emb/``, ``region_metadata/``), for text → region search.
    rank, world_size: this process's share (chunk i on process i mod n); default: ``RANK`` / ``WORLD_SIZE`` as
        ``torchrun`` and ``accelerate launch`` set them, else one process. Give both for SLURM arrays.
    tile / overlap: patch tokens from overlapping tiles of ``tile`` pixels blended on the patch grid, CLS tokens
        the mean of the tiles' (:func:`encode_tiled`, ``batch_size`` tiles at a time, one image at a time); without
        ``resolution`` the photo keeps its size (sides rounded to the patch).
    upsample / upsample_factor: ``"jbu"`` or ``"bilinear"``: patch tokens at ``upsample_factor`` times the patch
        grid, guided by the image, stored as float16 (``(N, F·h, F·w, D)``).
    """

    resolution: int | None = None
    keep_aspect: bool = False
    batch_size: int = 32
    num_workers: int = 0
    device: str | torch.device | None = None
    dtype: str | torch.dtype = "float32"
    save_dtype: str | torch.dtype = "float32"
    quantize: str | None = None
    patch_tokens: bool = False
    pool_patches: int | None = None
    shard_size: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    texts: str | os.PathLike | Sequence[str] | None = None
    pca: int = 0
    progress: bool = True
    force: bool = False  # replace another job's extraction in ``output`` (tips.inference.job_folder)
    regions: int | None = None
    rank: int | None = None
    world_size: int | None = None
    tile: int | None = None
    overlap: float = 0.25
    upsample: str | None = None
    upsample_factor: float = 4.0


def extract(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: TIPS | LoadedModel | str | os.PathLike,
    options: ExtractOptions = ExtractOptions(),
) -> ExtractResult:
    """Encode every image of ``sources`` into the folder ``output``; returns what was written.

    sources: folder (recursive), glob, list file, image file, or webdataset ``.tar`` shards (brace patterns).
    model: a TIPS model, anything ``tips.load`` reads, or a :class:`tips.inference.LoadedModel` (a random baseline
        with its provenance, for example).

    The work is split into chunks fixed by the input (one per tar shard, else ``shard_size`` consecutive files,
    :data:`DEFAULT_CHUNK` by default), never by the number of processes; chunk i goes to process i mod n. Each
    chunk's files are written, then its done marker (``chunks/``); a rerun skips done chunks, so a killed run, on
    any number of processes, finishes where it stopped. Whichever process finds every chunk done writes the
    folder's index, ``skipped.json``, the text embeddings and, last, the complete manifest.
    Unreadable images are skipped and listed (``skipped.json``); if none is readable, NoReadableImages is raised.
    """
    o = options
    rank, world = process_place(o.rank, o.world_size)
    if o.force and world > 1:
        raise ValueError("--force with several processes would let one delete what another writes: replace the "
                         "folder with one process first (or remove it), then launch the processes")
    refs = find_images(sources)
    if not refs:
        raise ValueError(f"no images found in {sources}")
    loaded = as_loaded(model)
    net, model_name = loaded.model, loaded.name
    resolution = o.resolution or net.preprocess.size
    prompts = _check_options(net, resolution, o.pool_patches, o.texts, o.regions)
    tiling, upsample = _check_dense_options(net, o)
    photo_size = tiling is not None and o.resolution is None  # tiles: the photo's own size unless a resolution
    dev = next(net.parameters()).device if o.device is None and isinstance(model, TIPS) else resolve_device(o.device)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dtype, save_dtype = resolve_dtype(o.dtype), resolve_dtype(o.save_dtype)
    out_dir = Path(output)
    identity = job_identity(sources, loaded, resolution, prompts, o)
    job_folder.claim(out_dir, identity, o.force)  # one job per folder: before anything is written
    prepare_for_inference(net, dev, o.quantize, o.dtype)

    chunks = plan_chunks(refs, o.shard_size)
    sources_of = {r.id: (f"{r.path}#{r.id}" if r.in_shard else r.path) for r in refs}
    metadata = {"format": FORMAT, "model": model_name, "resolution": "photo" if photo_size else str(resolution),
                "keep_aspect": str(o.keep_aspect or photo_size), "tile": str(o.tile),
                "overlap": str(o.overlap if tiling else None), "upsample": str(o.upsample),
                "upsample_factor": str(o.upsample_factor if upsample else None),
                "patch_size": str(net.patch_size), "pool_patches": str(o.pool_patches),
                "dtype": str(save_dtype).removeprefix("torch."), "compute_dtype": str(dtype).removeprefix("torch."),
                "quantize": str(o.quantize)}
    mine = [i for i in chunks_for_process(range(len(chunks)), rank, world)
            if not is_done(_marker(out_dir, i), identity, _chunk_input(i, chunks[i]))]
    # rank 0's bar covers every process: its own images as they are encoded, the others' as their chunks finish
    others = [i for i in range(len(chunks)) if i % world != rank and not _marker(out_dir, i).exists()]
    bar = ImageProgress(sum(len(chunks[i]) for i in mine + others), o.progress and rank == 0,
                        "images" if world == 1 else f"images ({world} processes)")
    start = time.perf_counter()
    encoded = 0
    with bar:
        for i in mine:
            writer = ChunkWriter(out_dir, i, save_dtype, metadata,
                                 ragged=(o.keep_aspect or photo_size) and o.pool_patches is None,
                                 sources=sources_of, regions=o.regions,
                                 patch_dtype=torch.float16 if upsample is not None else None)
            encoder = BatchEncoder(net, dtype, writer, o.patch_tokens or o.pool_patches is not None, o.pool_patches,
                                   o.pca if i == 0 else 0, o.regions, tiling, upsample, o.upsample_factor, o.batch_size)
            preprocess = RoundToPatch(net.patch_size) if photo_size else Preprocess(resolution, net.patch_size,
                                                                                     o.keep_aspect)
            dataset = ImageDataset(chunks[i], preprocess, o.max_pixels)
            images = 1 if tiling is not None else o.batch_size  # tiled: batch_size counts tiles, one image at a time
            loader = torch.utils.data.DataLoader(dataset, batch_size=images, num_workers=o.num_workers,
                                                 collate_fn=collate_decoded)
            skipped = run_batches(loader, len(chunks[i]), images, encoder, bar)
            files = writer.close()
            if encoder.pca_items:
                ids, images, grids, photos = zip(*encoder.pca_items)
                files.append(save_pca_picture(out_dir / "pca.png", images, grids, ids, photos))
            write_marker(_marker(out_dir, i), identity, _chunk_input(i, chunks[i]), files, ids=writer.ids,
                         skipped=[{"id": k, "reason": r} for k, r in skipped], shapes=writer.shapes)
            encoded += len(writer.ids)
            for j in [j for j in others if _marker(out_dir, j).exists()]:
                others.remove(j)
                bar.skipped(len(chunks[j]))
    seconds = time.perf_counter() - start
    return _finish(out_dir, chunks, identity, prompts, net, model_name, metadata, seconds, encoded, rank, world)


def plan_chunks(refs: Sequence[ImageRef], shard_size: int | None) -> list[list[ImageRef]]:
    """The job's units of work: the images of one tar shard, or ``shard_size`` (default :data:`DEFAULT_CHUNK`)
    consecutive files — fixed by the input alone, so any number of processes shares the same chunks."""
    size = shard_size or DEFAULT_CHUNK
    chunks: list[list[ImageRef]] = []
    files: list[ImageRef] = []
    for ref in refs:
        if ref.in_shard:
            if not chunks or not chunks[-1] or not chunks[-1][-1].in_shard or chunks[-1][-1].path != ref.path:
                chunks.append([])
            chunks[-1].append(ref)
        else:
            if not chunks or not chunks[-1] or chunks[-1][-1].in_shard or len(chunks[-1]) == size:
                chunks.append([])
            chunks[-1].append(ref)
    return chunks


def _marker(out_dir: Path, chunk: int) -> Path:
    """Beside the chunk's files (a marker only vouches for files below its own folder)."""
    return out_dir / f"chunk-{chunk:05d}.done.json"


def _chunk_input(chunk: int, refs: Sequence[ImageRef]) -> dict:
    """What the chunk reads: its number, count and a hash of its ids (a changed input makes it pending again)."""
    digest = hashlib.sha256("\n".join(r.id for r in refs).encode()).hexdigest()[:16]
    return {"chunk": chunk, "images": len(refs), "ids": digest}


def _finish(out_dir: Path, chunks: list[list[ImageRef]], identity: dict, prompts: list[str] | None, net: TIPS,
            model_name: str, metadata: dict, seconds: float, encoded: int, rank: int, world: int) -> ExtractResult:
    """When every chunk is done: the folder's ids, index, skipped list, text embeddings and (last) manifest."""
    # each marker hashed its files when written (and this process re-hashed its own at start): matching suffices
    markers = [read_marker(_marker(out_dir, i)) for i in range(len(chunks))]
    pending = [i for i, m in enumerate(markers) if not matches(m, identity, _chunk_input(i, chunks[i]))]
    if pending:
        return ExtractResult(ids=[], skipped=[], files=[], seconds=seconds, encoded_here=encoded,
                             pending=f"rank {rank} of {world} done; {len(pending)} of {len(chunks)} chunks are other "
                                     "processes' (or unfinished): the folder completes when the last one finishes")
    ids = [i for m in markers for i in m["ids"]]
    skipped = [(s["id"], s["reason"]) for m in markers for s in m["skipped"]]
    skipped_path = out_dir / "skipped.json"
    write_text_atomic(skipped_path, json.dumps([{"id": i, "reason": r} for i, r in skipped], indent=1))
    if not ids:
        raise NoReadableImages(f"no readable images: all {len(skipped)} skipped (reasons in {skipped_path})")
    shards, start, files = [], 0, [skipped_path]
    for i, m in enumerate(markers):
        files += [out_dir / f["name"] for f in m["outputs"]] + [_marker(out_dir, i)]
        if m["ids"]:
            shards.append({"file": chunk_file(i), "start": start, "count": len(m["ids"])})
            start += len(m["ids"])
    write_text_atomic(out_dir / "ids.jsonl", "".join(json.dumps(i) + "\n" for i in ids))
    index = {"format": FORMAT, "count": len(ids), "shards": shards, "ids": "ids.jsonl", **metadata}
    write_text_atomic(out_dir / "index.json", json.dumps(index, indent=1))
    files += [out_dir / "ids.jsonl", out_dir / "index.json"]
    shapes = next((m.get("shapes") for m in markers if m.get("shapes")), {})
    result = ExtractResult(ids=ids, skipped=skipped, files=files, seconds=seconds, encoded_here=encoded,
                           shapes={k: tuple(v) for k, v in shapes.items()})
    if out_dir / "pca.png" in files:
        result.pca = out_dir / "pca.png"
    if prompts is not None:
        emb = encode_prompts(net, prompts)
        result.text = _write_text_embeddings(out_dir, prompts, emb, model_name)
        result.files += [result.text, out_dir / "texts.json"]
        write_vectors(out_dir, "text", 0, emb.numpy())
        result.files += [vector_file(out_dir, "text", 0), write_rows(out_dir, "text", 0, {"id": list(range(len(prompts))),
                                                                                         "caption": prompts})]
    job_folder.complete(out_dir, identity, result.files, rows=len(ids))  # last: the folder holds exactly this job
    return result


def job_identity(sources, loaded: LoadedModel, resolution: int, prompts: list[str] | None,
                 o: ExtractOptions) -> dict:
    """What makes two extractions the same job (JSON): the model (name, provenance, weights fingerprint), the
    sources and every option that changes what the files hold (not batch size, workers, device or progress)."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    texts = None if prompts is None else hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    options = {"resolution": resolution, "keep_aspect": o.keep_aspect, "dtype": str(resolve_dtype(o.dtype)),
               "save_dtype": str(resolve_dtype(o.save_dtype)), "quantize": o.quantize,
               "patch_tokens": o.patch_tokens, "pool_patches": o.pool_patches, "shard_size": o.shard_size,
               "max_pixels": o.max_pixels or None, "texts": texts, "pca": o.pca, "regions": o.regions}
    if o.tile is not None or o.upsample is not None:  # only when used: earlier folders keep their identity
        options |= {"tile": o.tile, "overlap": o.overlap if o.tile is not None else None, "upsample": o.upsample,
                    "upsample_factor": o.upsample_factor if o.upsample is not None else None}
    model = {"name": loaded.name, "record": json.loads(json.dumps(loaded.record, default=str)),
             "weights": job_folder.weights_fingerprint(loaded.model)}
    return {"model": model, "sources": [str(Path(i).resolve()) if Path(i).exists() else str(i) for i in items],
            "options": options}


def _check_options(net: TIPS, resolution: int, pool_patches: int | None, texts,
                   regions: int | None = None) -> list[str] | None:
    """Validate options against the model before any image is read; returns the prompts (or None)."""
    check_resolution(resolution, net.patch_size)
    grid = resolution // net.patch_size
    if pool_patches is not None and not 1 <= pool_patches <= grid:
        raise ValueError(f"--pool-patches {pool_patches} must be in 1..{grid} (the patch grid at {resolution} px)")
    if regions is not None and not 1 <= regions <= grid:
        raise ValueError(f"--regions {regions} must be in 1..{grid} (the patch grid at {resolution} px)")
    if texts is None:
        return None
    if net.text is None or net.tokenizer is None:
        raise ValueError("texts need a text tower and a tokenizer: pass --text (official text .npz) and/or --tokenizer")
    return _read_prompts(texts) if isinstance(texts, (str, os.PathLike)) else list(texts)


def _check_dense_options(net: TIPS, o: ExtractOptions) -> tuple[Tiling | None, Upsampler | None]:
    """--tile / --overlap / --upsample / --upsample-factor against the other options, before any image is read."""
    tiling = Tiling(o.tile, o.overlap) if o.tile is not None else None
    upsample = Upsampler(o.upsample) if o.upsample is not None else None
    for flag, used in (("--tile", tiling), ("--upsample", upsample)):
        if used is None:
            continue
        if not o.patch_tokens:
            raise ValueError(f"{flag} changes the patch tokens: add --patch-tokens")
        if o.pool_patches is not None:
            raise ValueError(f"{flag} and --pool-patches: pooling would undo it; give one of them")
        if o.regions is not None:
            raise ValueError(f"{flag} and --regions: region vectors are read from one pass over the image; "
                             "extract them in a separate run")
    if tiling is not None:
        tiling.check(net.patch_size)
    if upsample is not None:
        check_factor(o.upsample_factor)
    return tiling, upsample


def pool_patch_grid(patches: torch.Tensor, k: int) -> torch.Tensor:
    """(B, h, w, D) → (B, k, k, D) by adaptive average pooling (k ≤ h, w is checked up front)."""
    return F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)


def _write_text_embeddings(out_dir: Path, prompts: list[str], emb: torch.Tensor, model_name: str) -> Path:
    path = out_dir / "text_embeddings.safetensors"
    _atomic_save({"text": emb}, path, {"format": FORMAT, "model": model_name, "count": str(len(prompts)),
                                       "prompts": json.dumps(prompts)})
    write_text_atomic(out_dir / "texts.json", json.dumps(prompts, indent=1))
    return path
