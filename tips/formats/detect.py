"""Which layout a set of checkpoint keys is: detected from keys, never from file names."""

from __future__ import annotations


def detect_format(keys: set[str] | list[str]) -> str:
    """'official_vision', 'official_text', 'scenic_vision', 'scenic_text', 'hf', 'ours' or 'timm_vision'."""
    keys = set(keys)
    if any(k.startswith("vision_encoder.") for k in keys):
        return "hf"
    if any(k.startswith("encoder/") for k in keys):
        return "scenic_vision"
    if "token_emb/emb_var" in keys:
        return "scenic_text"
    if "register_tokens" in keys:
        return "official_vision"
    if "token_embedding.weight" in keys:
        return "official_text"
    if any(k.startswith("vision.") for k in keys):
        return "ours"
    if "reg_token" in keys:
        return "timm_vision"
    raise ValueError(f"unrecognised checkpoint layout; first keys: {sorted(keys)[:8]}")


