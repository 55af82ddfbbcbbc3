"""Our SentencePiece tokenizer against transformers' tokenizers built from the same .model file."""

import shutil

import pytest
import torch

from formats_spm import train_tiny_spm
from tips.models.tokenizers import SentencePieceTokenizer

transformers = pytest.importorskip("transformers")

IN_VOCAB = [
    "A Photo Of A CAT", "a photo of a cat", "two dogs, playing in the snow!", "café naïve résumé ünïcödé",
    "", "   ", "tabs\tand\nnewlines", "the quick brown fox " * 10, "x", "a bowl of soup; (both)? yes: pasta & parks",
]  # fmt: skip
OUT_OF_VOCAB = ["日本 ☃ €", "ÀÉÎÕÜ", "123 4567 89.5%", "'quoted' \"double\" [brackets]", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def spm_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"spm_{request.param}")
    model = train_tiny_spm(folder, request.param)
    shutil.copyfile(model, folder / "tokenizer.model")
    return request.param, folder


def _disagreements(texts, ours, theirs):
    ids, padding = ours(texts)
    enc = theirs(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == ids.shape == (len(texts), 64)
    return [t for i, t in enumerate(texts)
            if not (torch.equal(enc["input_ids"][i], ids[i]) and torch.equal(enc["attention_mask"][i] == 0, padding[i]))]  # fmt: skip


def test_battery_exercises_truncation_and_empty_rows(spm_folder):
    ours = SentencePieceTokenizer(spm_folder[1] / "tokenizer.model")
    ids, padding = ours(IN_VOCAB)
    assert not padding[IN_VOCAB.index("the quick brown fox " * 10)].any()  # > 64 pieces: truncated, no padding
    assert padding[IN_VOCAB.index("")].all() and padding[IN_VOCAB.index("   ")].all()


def test_tipsv2_tokenizer_agrees_on_a_bpe_model_within_its_vocabulary(spm_folder):
    kind, folder = spm_folder
    theirs = transformers.Tipsv2Tokenizer.from_pretrained(str(folder))
    bad = _disagreements(IN_VOCAB, SentencePieceTokenizer(folder / "tokenizer.model"), theirs)
    if kind == "unigram":
        # Measured with transformers 5.24: Tipsv2Tokenizer rebuilds a BPE tokenizer from a unigram .model and
        # splits ordinary words differently. Kept as a check so a fixed transformers shows up here.
        assert bad, "Tipsv2Tokenizer now agrees on a unigram model: drop the tokenizer.json workaround in tips.formats.hf_tokenizer"
    else:
        assert bad == []


def test_tipsv2_tokenizer_drops_out_of_vocabulary_characters(spm_folder):
    """Documented difference: SentencePiece maps unknown characters to <unk>; Tipsv2Tokenizer drops them."""
    kind, folder = spm_folder
    theirs = transformers.Tipsv2Tokenizer.from_pretrained(str(folder))
    assert _disagreements(OUT_OF_VOCAB, SentencePieceTokenizer(folder / "tokenizer.model"), theirs)


def test_our_exported_tokenizer_files_agree_everywhere(spm_folder, tmp_path):
    from tips.formats.hf_tokenizer import write_tokenizer_files

    kind, folder = spm_folder
    shutil.copyfile(folder / "tokenizer.model", tmp_path / "tokenizer.model")
    write_tokenizer_files(tmp_path, tmp_path / "tokenizer.model", 64)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert _disagreements(IN_VOCAB + OUT_OF_VOCAB, SentencePieceTokenizer(folder / "tokenizer.model"), theirs) == []
