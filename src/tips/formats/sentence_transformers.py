"""sentence-transformers folders: ``SentenceTransformer(DIR)`` encodes strings and PIL images into a TIPS space,
offline, with nothing but sentence-transformers' built-in modules and transformers' ``Tipsv2Model``.

The folder is our transformers export (:mod:`.hf`: ``Tipsv2Model``, its image processor, tokenizer and processor)
plus sentence-transformers' own files: ``modules.json`` (its ``Transformer`` module on the folder, then
``Normalize``), ``sentence_bert_config.json`` (the multimodal routing: a text goes through
``get_text_features``, an image through ``get_image_features``, each taking ``pooler_output``) and
``config_sentence_transformers.json`` (cosine similarity). ``truncate_dim`` gives the Matryoshka widths.

``pooler_output`` of the image tower is the first token. For ``cls="syn"`` (CLS2, the synthetic-caption space) the
written tower has its two CLS tokens swapped: both enter without a position, and attention does not depend on
token order, so the first token's output is then exactly CLS2. That folder is for sentence-transformers; its
``Tipsv2Model`` has the original CLS2 first, which config.json's ``"tips"`` field records (``cls_swapped``), so
``tips.load`` swaps them back and reads the original model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..io.atomic import staged_dir
from ..models.tips import TIPS
from .hf import CLS_SWAPPED, EXTRA_FIELD, export_transformers, swap_cls_tokens

MODULE = "sentence_transformers.base.modules"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": f"{MODULE}.transformer.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Normalize", "type": f"{MODULE}.normalize.Normalize"},
]
ROUTING = {
    "transformer_task": "feature-extraction",
    "modality_config": {
        "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
        "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
    },
    "module_output_name": "sentence_embedding",
}
CLS = ("alt", "syn")


def cls_first(model: TIPS, cls: str) -> TIPS:
    """``model`` itself for ``alt``; for ``syn`` a copy whose image tower has CLS2 first (see the module's note)."""
    if cls not in CLS:
        raise ValueError(f"--cls {cls!r}: expected one of {CLS} (alt: CLS1, alt-text space; syn: CLS2, captions)")
    if cls == "alt":
        return model
    return swap_cls_tokens(copy.deepcopy(model))


def write_sentence_transformers(model: TIPS, out_dir: str | Path, cls: str = "alt") -> dict[str, Path]:
    """Write the folder (swapped in whole); ``cls``: which image CLS the images embed with (texts share one space)."""
    if model.text is None:
        raise ValueError(f"{out_dir}: a sentence-transformers folder needs the text tower; this model has none "
                         "(pass text=<official text .npz> to tips.load)")
    tok = model.tokenizer
    if tok is None or tok.kind != "sentencepiece":
        raise ValueError(f"{out_dir}: a sentence-transformers folder needs a SentencePiece tokenizer (transformers "
                         "cannot express our byte-level BPE); load the model with tokenizer='tokenizer.model'")
    source = cls_first(model, cls)
    out = Path(out_dir)
    with staged_dir(out) as tmp:
        export_transformers(source, tmp / "model")
        for f in (tmp / "model").iterdir():
            f.rename(tmp / f.name)
        (tmp / "model").rmdir()
        config = json.loads((tmp / "config.json").read_text())
        config.setdefault(EXTRA_FIELD, {})[CLS_SWAPPED] = cls == "syn"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "1_Normalize").mkdir()
        (tmp / "modules.json").write_text(json.dumps(MODULES, indent=2))
        (tmp / "sentence_bert_config.json").write_text(json.dumps(ROUTING, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps({
            "model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
            "default_prompt_name": None, "similarity_fn_name": "cosine", "tips": {"cls": cls}}, indent=2))
    return {"folder": out, "modules": out / "modules.json"}


write = write_sentence_transformers
