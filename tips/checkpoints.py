"""Deprecated: kept only so that old ``from tips.checkpoints import …`` lines still run.

The checkpoint layouts live in :mod:`tips.formats`, one module per layout; the public entry points are
``tips.load``, ``tips.save_pretrained``, ``tips.export_official`` and ``TIPS.save_pretrained(format=...)``.
Nothing in this repository imports this module.
"""

from __future__ import annotations

import warnings

from .formats.common import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    StateDict,
    build_from_state_dicts,
    infer_text_config,
    infer_vision_config,
    load_strict,
    read_npz,
    split_text_temperature,
)
from .formats.detect import detect_format
from .formats.hf import load_hf
from .formats.official import export_official, load_official_npz, official_vision_to_ours, ours_to_official_vision, read_sidecar, sidecar_path
from .formats.pretrained import FORMAT_VERSION, load_pretrained, save_pretrained
from .formats.scenic import scenic_text_to_ours, scenic_vision_to_ours

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "TOKENIZER_NAME", "WEIGHTS_NAME", "StateDict", "build_from_state_dicts",
    "detect_format", "export_official", "infer_text_config", "infer_vision_config", "load_hf", "load_official_npz",
    "load_pretrained", "load_strict", "official_vision_to_ours", "ours_to_official_vision", "read_npz", "read_sidecar",
    "save_pretrained", "scenic_text_to_ours", "scenic_vision_to_ours", "sidecar_path", "split_text_temperature",
]  # fmt: skip

warnings.warn("tips.checkpoints is deprecated: use tips.load / tips.save_pretrained / tips.export_official, or the "
              "modules of tips.formats", DeprecationWarning, stacklevel=2)
