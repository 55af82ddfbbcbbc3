"""A tiny SentencePiece model trained offline with sentencepiece itself (shared by the format tests)."""

from pathlib import Path

CORPUS = [
    "a photo of a cat", "two dogs playing in the snow", "the quick brown fox jumps over the lazy dog!",
    "a red car parked near a building, at night.", "ünïcödé café naïve résumé", "numbers 123 4567 and 89",
    "a bowl of soup; a plate of pasta? yes: (both)", "an aerial view of the city - streets & parks",
]  # fmt: skip
VOCAB = 80


def train_tiny_spm(folder: Path, model_type: str = "unigram") -> Path:
    """pad = 0, unk = 1, no BOS/EOS (the official tokenizer's id 0 is padding too), ``VOCAB`` pieces; the official
    T5-style model is a unigram one."""
    import sentencepiece as spm

    prefix = folder / f"tiny_sp_{model_type}"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(prefix), vocab_size=VOCAB, model_type=model_type,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return prefix.with_suffix(".model")
