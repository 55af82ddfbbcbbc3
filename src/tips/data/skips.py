"""Counting and rate-limited logging of skipped samples (corrupt images, bad captions, broken shards).

Each data worker owns one :class:`SkipCounter`; every batch carries the worker's counts since its previous batch
(``Batch.stats``) and the main process sums them into its own counter (``TrainLoader.skips``), which the trainer
logs. The counter is also a webdataset exception handler: warn and continue.
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger("tips.data")

# Reasons a sample is dropped; a Batch.stats dict uses these names.
REASONS = (
    "tar_error",  # unreadable / truncated tar or shard that cannot be opened (webdataset handler)
    "missing_image",  # no jpg / jpeg / png / webp member
    "missing_alt_text",  # no txt member, or an empty one
    "no_synthetic_caption",  # json without a non-empty synthetic caption
    "bad_text",  # caption bytes not UTF-8 or json not parseable
    "bad_image",  # the image does not decode
    "too_large",  # more pixels than DataConfig.max_image_pixels (read from the header)
)


class SkipSample(Exception):
    """Raised by a pipeline stage to drop one sample for a named reason (one of REASONS)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipCounter:
    """Counts skipped samples by reason; logs the first of each reason, then a summary every ``log_every``.

    Use as a webdataset handler (``tarfile_to_samples(handler=counter)``): it counts ``tar_error`` and
    returns True (continue).
    """

    def __init__(self, log_every: int = 1000, name: str = "") -> None:
        self.log_every = max(1, int(log_every))
        self.name = name
        self.totals: Counter[str] = Counter()
        self._since_batch: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` skips of ``reason``; warn on the first of a reason and every ``log_every`` skips."""
        before = self.total
        first = self.totals[reason] == 0
        self.totals[reason] += n
        self._since_batch[reason] += n
        if first:
            logger.warning("%sskipping sample (%s) %s", self._prefix(), reason, detail[:300])
        if before // self.log_every != self.total // self.log_every:
            logger.warning("%s%d samples skipped so far: %s", self._prefix(), self.total, dict(self.totals))

    def __call__(self, exn: BaseException) -> bool:
        """webdataset handler: count a tar-level error and continue with the next file or shard."""
        self.add("tar_error", f"{type(exn).__name__}: {exn}")
        return True

    def pop_delta(self) -> dict[str, int]:
        """Counts since the previous call (what one Batch carries)."""
        delta = dict(self._since_batch)
        self._since_batch.clear()
        return delta

    def update(self, delta: dict[str, int]) -> None:
        """Add a Batch's ``stats`` to the totals (main process); no logging, the workers already warned."""
        for reason, n in delta.items():
            self.totals[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(self.totals)

    def _prefix(self) -> str:
        return f"[{self.name}] " if self.name else ""
