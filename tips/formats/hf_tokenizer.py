"""Tokenizer files for a transformers folder, from our SentencePiece model, giving exactly our ids.

transformers' ``Tipsv2Tokenizer`` always rebuilds a *BPE* tokenizer from ``tokenizer.model``. For a SentencePiece
BPE model that reproduces SentencePiece's ids; for a *unigram* model (the T5-style kind) it does not (measured:
different pieces on ordinary words). So a unigram model is written as a ``tokenizers`` Unigram ``tokenizer.json``
(the same pieces, scores, normaliser and unknown id as the ``.model``) loaded by ``AutoTokenizer`` as a generic
fast tokenizer, and a BPE model through ``Tipsv2Tokenizer`` itself. Both apply our rules: lower-case, no BOS/EOS,
pad id 0, right padding to 64.
"""

from __future__ import annotations

import json
from pathlib import Path


def _spm_proto(model_file: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def write_tokenizer_files(folder: Path, model_file: Path, length: int) -> str:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` into ``folder`` (which already holds ``tokenizer.model``);
    returns the tokenizer class transformers will build."""
    proto = _spm_proto(model_file)
    kind = proto.trainer_spec.model_type  # 1 unigram, 2 bpe, 3 word, 4 char
    if proto.pieces[0].piece != "<pad>" and proto.trainer_spec.pad_id != 0:
        raise ValueError(f"{model_file}: id 0 is {proto.pieces[0].piece!r}, not the padding piece our rules need")
    if kind == 2:
        from transformers import Tipsv2Tokenizer

        Tipsv2Tokenizer.from_pretrained(str(folder), model_max_length=length).save_pretrained(str(folder))
        return "Tipsv2Tokenizer"
    if kind != 1:
        raise ValueError(f"{model_file}: SentencePiece model type {kind} is neither unigram (1) nor BPE (2)")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    unk_id = proto.trainer_spec.unk_id
    tokenizer = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=unk_id, byte_fallback=False))
    steps = [normalizers.Lowercase()]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": length, "padding_side": "right",
        "pad_token": proto.pieces[0].piece, "unk_token": proto.pieces[unk_id].piece, "bos_token": None,
        "eos_token": None, "tips_note": "unigram SentencePiece model: see tips.formats.hf_tokenizer",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return "PreTrainedTokenizerFast"
