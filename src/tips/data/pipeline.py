"""The training input pipeline: sources → shuffle (compressed) → decode → views + mask + captions → Batch.

Determinism and resume
----------------------
Worker ``w`` of rank ``r`` produces, in virtual epoch ``e``, a stream that is a pure function of
(seed, e, r, w): shard order, resampling, mixing and the shuffle buffer are seeded from those numbers, and
sample ``j`` of the worker's epoch draws its crops, flips, mask and synthetic caption from a generator seeded
with (seed, e, r, w, j). The DataLoader interleaves workers round-robin, so batch ``i`` of an epoch comes from
worker ``i mod W`` (with fixed-size epochs). Resuming at batch ``i`` of epoch ``e`` therefore means: every worker
rebuilds its epoch-``e`` stream and fast-forwards over its batches before ``i`` *decoding only* (decoding decides
which samples are dropped, so it cannot be skipped; crops, masks and tokenisation are), and the main process
restores the round-robin order with a reorder buffer of at most W batches. Resume needs the same seed, sources,
batch size, num_workers and world size. Skip counts seen during a fast-forward are not re-reported.

Epochs
------
* ``epoch_size`` set (required with ``resampled`` or several ranks): each rank yields ``epoch_size // batch_size``
  full batches per epoch, the same on every rank. Without resampling an epoch starts a fresh pass in a new shard
  order (seed, epoch) and chains further passes if it needs more samples.
* ``epoch_size=None`` (single rank, no resampling): an epoch is exactly one pass; every good sample arrives once
  and each worker's last batch may be short. Resuming mid-run first counts the batches of the earlier epochs
  with a decode-only pass each (cheap for the small sets this mode is for).
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing as mp
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..models.tokenizers import build_tokenizer
from .batch import Batch, trim_padding
from .masking import MaskConfig, make_mask
from .skips import SkipCounter, SkipSample
from .sources import (
    Record,
    Source,
    check_shard_counts,
    decode_image,
    derive_seed,
    load_sources,
    pass_records,
    resampled_records,
    weighted_mix,
)
from .views import ViewConfig, draft_size, make_views

# Seed purposes, so that no two random streams share a seed.
_ORDER, _BUFFER, _MIX, _RESAMPLE, _SAMPLE = range(1, 6)


@dataclass
class DataConfig:
    """Everything the input pipeline needs. ``batch_size`` and ``epoch_size`` are per rank.

    sources: shard brace patterns (local paths, http(s) urls, ``pipe:`` commands) or ``.csv`` / ``.jsonl``
        tables with columns ``image`` (path relative to ``image_root``, default the table's folder),
        ``alt_text`` and ``synthetic_captions`` (list or JSON list) / ``synthetic_caption``.
    weights: sampling weight per source (resampled mode; None = equal).
    resampled: draw shards with replacement (training at scale) instead of exact passes.
    epoch_size: samples per rank per virtual epoch; None = one exact pass (single rank, no resampling).
    shuffle_buffer, shuffle_initial: sample shuffle buffer (compressed samples) per worker and its warm-up.
    max_image_pixels: larger images (by header) are skipped as ``too_large``.

    JPEGs are decoded at reduced scale (1/2, 1/4, 1/8) when the smallest crop the views can draw still keeps its
    output size in pixels (``views.draft_size``); that is deterministic, so resume stays exact.
    """

    sources: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    resampled: bool = True
    batch_size: int = 64
    num_workers: int = 4
    epoch_size: int | None = None
    seed: int = 0
    shuffle_buffer: int = 2000
    shuffle_initial: int = 500
    views: ViewConfig = field(default_factory=ViewConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    patch_size: int = 14
    tokenizer: str = "bpe"
    image_root: str | None = None
    max_image_pixels: int = 89_478_485
    persistent_workers: bool = True
    pin_memory: bool | None = None  # None: pin when CUDA is available
    prefetch_factor: int = 2
    log_skips_every: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if isinstance(self.views, dict):
            self.views = ViewConfig(**self.views)
        if isinstance(self.mask, dict):
            self.mask = MaskConfig(**self.mask)
        if self.views.global_size % self.patch_size:
            raise ValueError(f"global_size {self.views.global_size} is not a multiple of patch_size {self.patch_size}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {self.batch_size}, {self.num_workers}")
        if self.epoch_size is not None and self.epoch_size < self.batch_size:
            raise ValueError(f"epoch_size {self.epoch_size} is smaller than one batch ({self.batch_size})")

    @property
    def grid(self) -> int:
        """Patches per side of the global crop (16 at 224 / 14)."""
        return self.views.global_size // self.patch_size

    @property
    def batches_per_epoch(self) -> int | None:
        return None if self.epoch_size is None else self.epoch_size // self.batch_size


def _worker_info() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def worker_batches(batches: int, worker: int, num_workers: int) -> int:
    """How many of an epoch's first ``batches`` batches come from ``worker`` (round-robin: i mod W)."""
    return len(range(worker, batches, num_workers))


def round_robin(counts: list[int]) -> list[int]:
    """Worker id of each batch as the DataLoader delivers them: cycling over workers, skipping finished ones."""
    return [w for r in range(max(counts, default=0)) for w in range(len(counts)) if counts[w] > r]


class _EpochPlan:
    """Shared with the workers: the epoch to produce and how many leading batches each worker skips."""

    def __init__(self, num_workers: int) -> None:
        self.epoch = mp.RawValue("q", 0)
        self.skip = mp.RawArray("q", max(1, num_workers))

    def write(self, epoch: int, skip: list[int]) -> None:
        self.epoch.value = epoch
        for w in range(len(self.skip)):
            self.skip[w] = skip[w] if w < len(skip) else 0

    def read(self, worker: int) -> tuple[int, int]:
        return int(self.epoch.value), int(self.skip[worker])


class TipsStream(IterableDataset):
    """One worker's batches of one epoch (see the module docstring); ``dry`` yields only (worker, num_batches)."""

    def __init__(self, cfg: DataConfig, sources: list[Source], tokenizer: Any, rank: int, world_size: int,
                 plan: _EpochPlan, dry: bool = False) -> None:
        super().__init__()
        self.cfg, self.sources, self.tokenizer = cfg, sources, tokenizer
        self.rank, self.world_size, self.plan, self.dry = rank, world_size, plan, dry
        self._skips: SkipCounter | None = None

    def __iter__(self) -> Iterator[Batch | tuple[int, int]]:
        worker, num_workers = _worker_info()
        epoch, skip = self.plan.read(worker)
        if self._skips is None:  # one counter per process, kept across epochs (rate-limited logging)
            self._skips = SkipCounter(self.cfg.log_skips_every, name=f"rank {self.rank} worker {worker}")
        nb = self.cfg.batches_per_epoch
        limit = None if nb is None else worker_batches(nb, worker, num_workers)
        if limit == 0:
            return
        records = self._records(epoch, worker, self._skips)
        yield from self._batches(records, epoch, worker, skip, limit, self._skips)

    # -- records of one epoch -------------------------------------------------

    def _records(self, epoch: int, worker: int, skips: SkipCounter) -> Iterator[Record]:
        cfg, rank = self.cfg, self.rank
        if cfg.resampled:
            streams = [resampled_records(s, derive_seed(cfg.seed, _RESAMPLE, epoch, rank, worker, i), skips)
                       for i, s in enumerate(self.sources)]
            mix_rng = np.random.default_rng(derive_seed(cfg.seed, _MIX, epoch, rank, worker))
            records = weighted_mix(streams, [s.weight for s in self.sources], mix_rng)
        else:
            records = self._passes(epoch, skips)
        if cfg.shuffle_buffer > 1:
            seed = derive_seed(cfg.seed, _BUFFER, epoch, rank, worker)
            records = wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_initial, seed=seed)(records)
        return records

    def _passes(self, epoch: int, skips: SkipCounter) -> Iterator[Record]:
        """Pass 0 of the epoch, then (fixed-size epochs only) further passes in new orders."""
        for k in itertools.count():
            n = 0
            for i, source in enumerate(self.sources):
                order_seed = derive_seed(self.cfg.seed, _ORDER, epoch, k, i)
                for record in pass_records(source, order_seed, self.rank, self.world_size, skips):
                    n += 1
                    yield record
            if self.cfg.epoch_size is None:
                return
            if n == 0:
                raise RuntimeError(f"rank {self.rank}: a whole pass over {[s.spec for s in self.sources]} gave "
                                   f"this worker no valid sample (skips: {skips.as_dict()})")

    # -- samples and batches ---------------------------------------------------

    def _batches(self, records: Iterator[Record], epoch: int, worker: int, skip: int, limit: int | None,
                 skips: SkipCounter) -> Iterator[Batch | tuple[int, int]]:
        """Group decoded samples into batches; the first ``skip`` batches are decoded but not augmented."""
        size, views = self.cfg.batch_size, self.cfg.views
        draft = functools.partial(draft_size, cfg=views)
        group: list[tuple] = []
        crops = self._new_crops()
        j = 0  # index of the next good sample in this worker's epoch
        for record in records:
            try:
                image = decode_image(record.image, self.cfg.max_image_pixels, draft)
            except SkipSample as exn:
                skips.add(exn.reason, f"{record.key}: {exn}")
                continue
            b = j // size
            if b >= skip and not self.dry:
                rng = np.random.default_rng([self.cfg.seed, _SAMPLE, epoch, self.rank, worker, j])
                row = len(group)
                group.append(self._sample(record, image, rng, crops[0][row], crops[1][row]))
            j += 1
            if j % size == 0:
                if b < skip:
                    skips.pop_delta()  # already reported by the run being resumed
                elif not self.dry:
                    yield self._collate(group, crops, worker, skips)
                    crops = self._new_crops()
                group = []
                if limit is not None and j // size >= limit:
                    break
        if self.dry:
            yield worker, -(-j // size)
        elif group and limit is None:  # exact pass: keep the short last batch
            yield self._collate(group, crops, worker, skips)

    def _new_crops(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch's crops, uint8 channels last: global (B, S, S, 3), local (B, M, s, s, 3)."""
        v, B = self.cfg.views, self.cfg.batch_size
        return (torch.empty((B, v.global_size, v.global_size, 3), dtype=torch.uint8),
                torch.empty((B, v.num_local, v.local_size, v.local_size, 3), dtype=torch.uint8))

    def _sample(self, record: Record, image: Image.Image, rng: np.random.Generator, global_out: torch.Tensor,
                local_out: torch.Tensor) -> tuple:
        """Views (written to ``global_out`` / ``local_out``), mask and one synthetic caption, all drawn from ``rng``."""
        make_views(np.asarray(image), self.cfg.views, rng, global_out, local_out)  # (H, W, 3) read-only view
        mask = make_mask(self.cfg.mask, self.cfg.grid, self.cfg.grid, rng)
        captions = record.synthetic_captions
        caption = captions[int(rng.integers(len(captions)))] if len(captions) > 1 else captions[0]
        return record.key, mask, record.alt_text, caption

    def _collate(self, group: list[tuple], crops: tuple[torch.Tensor, torch.Tensor], worker: int,
                 skips: SkipCounter) -> Batch:
        keys, masks, alt_texts, syn_texts = zip(*group)
        n = len(keys)
        # Each kind trimmed to its own length: alt-texts are a few words, synthetic captions fill the context.
        [(alt_ids, alt_padding)] = trim_padding([self.tokenizer(list(alt_texts))])
        [(syn_ids, syn_padding)] = trim_padding([self.tokenizer(list(syn_texts))])
        return Batch(
            global_crop=crops[0][:n].permute(0, 3, 1, 2),  # (B, 3, H, W) uint8, channels-last memory
            local_crops=crops[1][:n].permute(0, 1, 4, 2, 3),  # (B, M, 3, h, w) uint8
            patch_mask=torch.stack(masks),  # (B, N)
            alt_ids=alt_ids, alt_padding=alt_padding, syn_ids=syn_ids, syn_padding=syn_padding,
            keys=list(keys), stats=skips.pop_delta(), worker=worker,
        )


class TrainLoader:
    """Iterates one epoch of :class:`Batch` per ``iter()``; ``forever()`` chains epochs.

    ``skips`` sums the skip counts of all workers of this rank (log it; all-reduce it across ranks if wanted).
    ``batches_seen`` is what to store in a checkpoint and pass back as ``start_batch``.
    """

    def __init__(self, cfg: DataConfig, dataset: TipsStream, plan: _EpochPlan, start_batch: int = 0) -> None:
        self.cfg, self.dataset, self.plan = cfg, dataset, plan
        self.num_workers = max(1, cfg.num_workers)
        self.batches_per_epoch = cfg.batches_per_epoch
        self.skips = SkipCounter(cfg.log_skips_every)
        self.batches_seen = start_batch
        self._counts: dict[int, list[int]] = {}  # epoch → batches per worker (exact-pass mode)
        self.epoch, self.offset = self._locate(start_batch)
        self._loader = self._make_loader(dataset, persistent=cfg.persistent_workers)

    def _make_loader(self, dataset: TipsStream, persistent: bool) -> wds.WebLoader:
        workers = self.cfg.num_workers
        pin = torch.cuda.is_available() if self.cfg.pin_memory is None else self.cfg.pin_memory
        return wds.WebLoader(
            dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
            persistent_workers=persistent and workers > 0,
            prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
        )

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("an exact-pass loader (epoch_size=None) has no fixed length")
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"batches_seen": self.batches_seen, "epoch": self.epoch, "offset": self.offset}

    # -- planning --------------------------------------------------------------

    def _epoch_counts(self, epoch: int) -> list[int]:
        """Batches per worker in an exact-pass epoch, by a decode-only pass (cached)."""
        if epoch not in self._counts:
            plan = _EpochPlan(self.cfg.num_workers)
            plan.write(epoch, [0] * self.num_workers)
            d = self.dataset
            dry = TipsStream(d.cfg, d.sources, d.tokenizer, d.rank, d.world_size, plan, dry=True)
            counts = [0] * self.num_workers
            for worker, n in self._make_loader(dry, persistent=False):
                counts[int(worker)] = int(n)
            self._counts[epoch] = counts
        return self._counts[epoch]

    def _locate(self, start_batch: int) -> tuple[int, int]:
        """(epoch, batches into that epoch) of the ``start_batch``-th batch of this rank."""
        if self.batches_per_epoch is not None:
            return divmod(start_batch, self.batches_per_epoch)
        epoch = 0
        while start_batch > 0:
            n = sum(self._epoch_counts(epoch))
            if n == 0:
                raise RuntimeError("the data sources gave no valid sample in a whole pass")
            if start_batch < n:
                break
            start_batch -= n
            epoch += 1
        return epoch, start_batch

    def _plan(self) -> tuple[list[int] | None, list[int]]:
        """Expected worker order of the rest of this epoch (None: as delivered) and batches to skip per worker."""
        W, offset = self.num_workers, self.offset
        if self.batches_per_epoch is not None:
            order = [i % W for i in range(offset, self.batches_per_epoch)]
            return order, [worker_batches(offset, w, W) for w in range(W)]
        if offset == 0:
            return None, [0] * W
        sequence = round_robin(self._epoch_counts(self.epoch))
        return sequence[offset:], [sequence[:offset].count(w) for w in range(W)]

    # -- iteration -------------------------------------------------------------

    def _account(self, batch: Batch) -> Batch:
        self.skips.update(batch.stats)
        self.batches_seen += 1
        self.offset += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        order, skip = self._plan()
        self.plan.write(self.epoch, skip)
        if order is None:
            for batch in self._loader:
                yield self._account(batch)
        else:  # restore round-robin order after a resume (a no-op otherwise)
            pending: dict[int, deque[Batch]] = {w: deque() for w in range(self.num_workers)}
            pos = 0
            for batch in self._loader:
                pending[batch.worker].append(batch)
                while pos < len(order) and pending[order[pos]]:
                    yield self._account(pending[order[pos]].popleft())
                    pos += 1
            if pos != len(order):
                raise RuntimeError(f"epoch {self.epoch}: workers gave {pos} of {len(order)} planned batches")
        self.epoch += 1
        self.offset = 0

    def forever(self) -> Iterator[Batch]:
        """Epoch after epoch, without end."""
        while True:
            before = self.batches_seen
            yield from self
            if self.batches_seen == before:
                raise RuntimeError("an epoch yielded no batch: the sources gave no valid sample")


def build_train_loader(cfg: DataConfig, tokenizer: Any = None, rank: int = 0, world_size: int = 1,
                       start_batch: int = 0) -> TrainLoader:
    """The training loader of one rank. tokenizer: callable ``texts → (ids, padding)``; None builds
    ``cfg.tokenizer``. start_batch: batches this rank already consumed (resume exactly there)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if cfg.epoch_size is None and (cfg.resampled or world_size > 1):
        why = "resampled streams never end" if cfg.resampled else "every rank must run the same number of batches"
        raise ValueError(f"set DataConfig.epoch_size (samples per rank per epoch): {why}")
    sources = load_sources(cfg.sources, cfg.weights, cfg.image_root)
    if not cfg.resampled:
        if len({s.weight for s in sources}) > 1:
            raise ValueError("source weights need resampled=True (a pass reads every sample once)")
        check_shard_counts(sources, cfg.num_workers, world_size)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.tokenizer)
    plan = _EpochPlan(cfg.num_workers)
    dataset = TipsStream(cfg, sources, tokenizer, rank, world_size, plan)
    return TrainLoader(cfg, dataset, plan, start_batch)
