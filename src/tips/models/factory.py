"""``create_model``: a randomly initialised TIPS model of a named variant, ready to train or to probe as a baseline."""

from __future__ import annotations

import os
from typing import Any

from .tokenizers import Tokenizer, build_tokenizer
from .tips import TIPS
from .variants import get_variant


def create_model(variant: str = "tiny", tokenizer: str | os.PathLike | Tokenizer | None = None, **overrides: Any) -> TIPS:
    """A randomly initialised TIPS model of a named variant (``"tiny"``, ``"s14"`` … ``"g14"``), in eval mode like
    ``tips.load`` (call ``.train()`` to train it).

    overrides: dotted config fields, e.g. ``create_model("tiny", **{"vision.depth": 2})``; tokenizer: ``"bpe"``,
    a SentencePiece ``.model`` path or a tokenizer object (default: the variant's own). The text tower's vocabulary
    is sized to the tokenizer (``"bpe"``: 49,408 ids) unless ``text.vocab_size`` is given.
    """
    cfg = get_variant(variant, **overrides)
    tok = build_tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer)
    if tok is not None and cfg.text is not None and "text.vocab_size" not in overrides:
        cfg = get_variant(variant, **overrides, **{"text.vocab_size": tok.vocab_size})
    return TIPS(cfg, tokenizer=tok).eval()
