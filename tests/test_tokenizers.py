"""Tokenizers: official SentencePiece rules (per-row padding) and the offline BPE default."""

import io

import pytest
import sentencepiece as spm
import torch

from tips.models.tokenizers import BPETokenizer, SentencePieceTokenizer, build_tokenizer

CORPUS = [
    "a photo of a cat", "a red sphere left of a blue cube", "the dog runs on the grass",
    "a large green cylinder behind a small yellow cone", "sky above a checkered floor",
] * 20


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=60, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
    )
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def test_sentencepiece_lowercases_and_adds_no_bos_or_eos(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    ids, padding = tok(["A PHOTO of a Cat"])
    raw = tok.processor.encode("a photo of a cat")
    n = len(raw)
    assert ids[0, :n].tolist() == raw
    assert ids.shape == (1, 64) and ids.dtype == torch.int64
    assert not padding[0, :n].any() and padding[0, n:].all()
    assert 1 not in raw  # no EOS


def test_padding_is_per_row_even_when_one_text_exceeds_the_length(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    long_text = " ".join(["a large green cylinder"] * 40)
    ids, padding = tok([long_text, "a cat"])
    assert not padding[0].any()  # truncated to 64 real tokens
    n = len(tok.processor.encode("a cat"))
    assert not padding[1, :n].any() and padding[1, n:].all()  # the official batch tokenizer loses this


def test_bpe_uses_open_clip_vocabulary_without_start_end_tokens():
    tok = BPETokenizer()
    ids, padding = tok("a photo of a cat")
    assert ids[0, :5].tolist() == [320, 1125, 539, 320, 2368]
    assert padding[0, :5].sum() == 0 and padding[0, 5:].all()
    assert tok.vocab_size == 49408


def test_bpe_padding_comes_from_lengths_because_id_zero_is_a_token():
    tok = BPETokenizer()
    ids, padding = tok(['!"!', ""])  # BPE splits this into "!" (id 0) + '"!</w>'
    assert ids[0, 0] == 0 and not padding[0, 0]
    assert padding[1].all()


def test_build_tokenizer_names_the_missing_file(tmp_path):
    assert isinstance(build_tokenizer("bpe"), BPETokenizer)
    assert build_tokenizer(None) is None
    with pytest.raises(FileNotFoundError, match="missing.model"):
        build_tokenizer(tmp_path / "missing.model")


def test_bpe_fast_cleaning_gives_open_clip_tokens_for_plain_and_unusual_text():
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    tok = BPETokenizer()
    assert tok._bpe.clean_fn == tok._clean  # the fast path is on
    texts = ["A photo of a Cat,  on the   mat.", "tabs\tand\nnewlines", "fish &amp; chips &lt;b&gt;",
             "caf\u00e9 na\u00efve \u2019quoted\u2019", "bell\x07 and \x1b[31mred\x1b[0m", "\u00c3\u00a9 mojibake", ""]
    for text in texts:
        assert tok.encode(text) == reference.encode(text.lower()), text
