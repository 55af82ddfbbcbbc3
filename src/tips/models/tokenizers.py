"""Tokenizers for the TIPS text tower. Both return ``(ids, padding)``: ids (B, L) int64, padding (B, L) bool, True = padded.

- :class:`SentencePieceTokenizer`: the official rules for the official ``tokenizer.model`` (32k vocabulary):
  lower-case, no BOS/EOS, truncate/pad to 64 with id 0. Padding is computed **per row** (the official batch
  tokenizer drops the mask of the whole batch when one text is longer than 64).
- :class:`BPETokenizer`: open_clip's bundled byte-level BPE (49 408 tokens), for training from scratch offline.
  Same rules; no start/end tokens; padding comes from lengths because id 0 is a real BPE token ("!").
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from itertools import islice
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

DEFAULT_LENGTH = 64
# Words of a caption longer than this (characters) are cut before tokenising; no word of a natural caption is.
MAX_WORD_CHARS = 256
# Entries of the BPE word cache (open_clip's grows without bound in a long-lived data worker).
BPE_CACHE_SIZE = 50_000
_WORD = re.compile(r"\S+")


def cut_caption(text: str, length: int, max_word: int = MAX_WORD_CHARS) -> str:
    """The first ``length`` whitespace-separated words of ``text``, each cut to ``max_word`` characters.

    Why the first ``length`` ids survive: cleaning (whitespace folding, lower case, HTML unescaping) never joins
    two words; the tokenizers' pre-tokens never span whitespace, every word holds at least one pre-token and
    every pre-token gives at least one id, computed from that pre-token alone. So the first ``length`` ids come
    from the first ``length`` words, which are kept whole when no word is longer than ``max_word``.
    Cost: O(kept text), not O(caption): a 10 MB caption is never split or encoded whole.
    """
    words = [m.group()[:max_word] for m in islice(_WORD.finditer(text), length)]
    return " ".join(words)


class LRUCache(OrderedDict):
    """A dict that keeps the ``size`` most recently used entries, plus ``pinned`` ones it never evicts
    (open_clip's special tokens, whose cached value is their only definition)."""

    def __init__(self, size: int = BPE_CACHE_SIZE, pinned: dict | None = None) -> None:  # defaults: copy.deepcopy
        super().__init__()
        self.size, self.pinned = size, dict(pinned or {})

    def __contains__(self, key) -> bool:
        return key in self.pinned or super().__contains__(key)

    def __getitem__(self, key):
        if key in self.pinned:
            return self.pinned[key]
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    return texts


def _pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    padding = np.arange(length)[None, :] >= lengths[:, None]
    return torch.from_numpy(ids), torch.from_numpy(padding)


class SentencePieceTokenizer:
    """The official TIPS tokenizer rules on a SentencePiece model file."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike, length: int = DEFAULT_LENGTH) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model {path} not found. The official TIPS tokenizer is "
                "https://storage.googleapis.com/tips_data/v1_0/checkpoints/tokenizer.model; download it and pass its path."
            )
        self.model_file = path
        self.processor = spm.SentencePieceProcessor(model_file=str(path))
        self.length = length
        self.pad_id = 0

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Ids of the first ``length`` words (:func:`cut_caption`: the first ``length`` ids are unchanged)."""
        return self.processor.encode(cut_caption(text, self.length).lower(), add_bos=False, add_eos=False)

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.encode(t) for t in _as_list(texts)]
        ids, _ = _pad(rows, self.length, self.pad_id)
        # Official rule: a position is padding iff its id is 0 (per row, after truncation).
        return ids, ids == self.pad_id


class BPETokenizer:
    """open_clip's bundled BPE vocabulary under the TIPS rules (works offline)."""

    kind = "bpe"

    def __init__(self, length: int = DEFAULT_LENGTH) -> None:
        from open_clip import tokenizer as oc

        self._bpe = oc.SimpleTokenizer(context_length=length)
        self.length = length
        self.pad_id = 0
        self._full_clean = getattr(oc, "_clean_lower", None)
        if self._full_clean is not None and getattr(self._bpe, "clean_fn", None) is self._full_clean:
            self._bpe.clean_fn = self._clean
        self._bpe.cache = LRUCache(BPE_CACHE_SIZE, pinned=self._bpe.cache)  # holds the special tokens

    def _clean(self, text: str) -> str:
        """open_clip's cleaning (ftfy, HTML unescaping twice, whitespace folding, lower case). On printable ASCII
        without '&' the first two change nothing, so only the cheap last two run: tokens are the same, and
        tokenising a caption, which the data workers do for every sample, costs a quarter less."""
        if text.isascii() and text.isprintable() and "&" not in text:
            return " ".join(text.split()).lower()
        return self._full_clean(text)

    @property
    def vocab_size(self) -> int:
        return len(self._bpe.encoder)

    def encode(self, text: str) -> list[int]:
        """Ids of the first ``length`` words (:func:`cut_caption`: the first ``length`` ids are unchanged)."""
        return self._bpe.encode(cut_caption(text, self.length).lower())

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.encode(t) for t in _as_list(texts)]
        return _pad(rows, self.length, self.pad_id)


Tokenizer = SentencePieceTokenizer | BPETokenizer


def build_tokenizer(spec: str | os.PathLike | None, length: int = DEFAULT_LENGTH) -> Tokenizer | None:
    """``"bpe"`` → :class:`BPETokenizer`; a ``.model`` path → :class:`SentencePieceTokenizer`; None → None."""
    if spec is None:
        return None
    if isinstance(spec, (SentencePieceTokenizer, BPETokenizer)):
        return spec
    if str(spec).lower() == "bpe":
        return BPETokenizer(length)
    if str(spec).lower() == "sentencepiece":
        raise ValueError("tokenizer 'sentencepiece' needs the path of the .model file, e.g. tokenizer='tokenizer.model'")
    return SentencePieceTokenizer(spec, length)
