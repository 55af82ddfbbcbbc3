"""Tokenizer files for a transformers folder, from our SentencePiece model, giving exactly our ids.

transformers' ``Tipsv2Tokenizer`` (5.24) rebuilds a *BPE* tokenizer from ``tokenizer.model`` with no unknown
token. Measured against SentencePiece on the same file (tests/test_formats_tokenizers.py): for a *unigram* model
(the T5-style kind) it gives other pieces on ordinary words; for a BPE model it agrees except that characters
outside the vocabulary are dropped instead of becoming ``<unk>``. So we write an exact ``tokenizer.json`` loaded
by ``AutoTokenizer`` as a generic fast tokenizer: a unigram model as a ``tokenizers`` Unigram (the pieces, scores,
normaliser and unknown id of the ``.model``), a BPE model as transformers' own conversion with the unknown token
set. Both apply our rules: lower-case, no BOS/EOS, pad id 0, right padding to 64. ``tokenizer.model`` stays in the
folder for whoever wants ``Tipsv2Tokenizer`` itself.
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
    if kind not in (1, 2):
        raise ValueError(f"{model_file}: SentencePiece model type {kind} is neither unigram (1) nor BPE (2)")
    tokenizer = _unigram(proto) if kind == 1 else _bpe(folder, proto)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": length, "padding_side": "right",
        "pad_token": proto.pieces[0].piece,  # our rule: id 0 pads "unk_token": proto.pieces[unk_id].piece, "bos_token": None,
        "eos_token": None, "tips_note": "exact SentencePiece ids under the TIPS rules: see tips.formats.hf_tokenizer",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return "PreTrainedTokenizerFast"


def _unigram(proto):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces = [(p.piece, p.score) for p in proto.pieces]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    steps = [normalizers.Lowercase()]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def _bpe(folder: Path, proto):
    """transformers' own BPE conversion of the ``.model`` in ``folder``, with SentencePiece's unknown token."""
    from tokenizers import Tokenizer
    from transformers import Tipsv2Tokenizer

    spec = json.loads(Tipsv2Tokenizer.from_pretrained(str(folder)).backend_tokenizer.to_str())
    spec["model"]["unk_token"] = proto.pieces[proto.trainer_spec.unk_id].piece
    spec["model"]["byte_fallback"] = bool(proto.trainer_spec.byte_fallback)
    return Tokenizer.from_str(json.dumps(spec))
