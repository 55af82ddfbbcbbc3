"""The embedding space an index holds: which model, which vector kind, which width.

A query is only comparable with an index when it was embedded the same way; the space is written beside the index
and compared with the query's before any search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("cls_alt", "cls_syn", "region")


class SpaceMismatchError(ValueError):
    """A query embedded in one space searched against an index built in another."""


@dataclass(frozen=True)
class EmbeddingSpace:
    """model: the model's name; fingerprint: a hash of its weights (tips.inference.job_folder.weights_fingerprint);
    kind: ``cls_alt`` (CLS1, alt-text space), ``cls_syn`` (CLS2, synthetic-caption space) or ``region`` (value-readout
    patch features pooled over grid cells); width: the vector length stored (after any Matryoshka truncation);
    truncated_from: the model's full width when ``width`` is a truncation, else None."""

    model: str
    fingerprint: str
    kind: str
    width: int
    truncated_from: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"embedding kind {self.kind!r}: expected one of {KINDS}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"embedding width {self.width!r}: expected an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "index.json") -> EmbeddingSpace:
        try:
            return cls(model=str(d["model"]), fingerprint=str(d["fingerprint"]), kind=d["kind"], width=d["width"],
                       truncated_from=d.get("truncated_from"))
        except KeyError as e:
            raise ValueError(f"{source}: the embedding space has no {e.args[0]!r}: rebuild the index with tips-index") from None

    def describe(self) -> str:
        cut = f" truncated from {self.truncated_from}" if self.truncated_from else ""
        return f"{self.model} (weights {self.fingerprint}), {self.kind}, width {self.width}{cut}"


def check_same_space(index: EmbeddingSpace, query: EmbeddingSpace, index_name: str = "the index") -> None:
    """Raise SpaceMismatchError naming both spaces unless a query embedded in ``query`` may search ``index``."""
    if (index.fingerprint, index.kind, index.width) != (query.fingerprint, query.kind, query.width):
        raise SpaceMismatchError(f"{index_name} holds {index.describe()}; the query is {query.describe()}: "
                                 "embed the query with the index's model and kind, or rebuild the index")
