"""Checkpoint layouts, one module each, converted to and from our model.

- :mod:`.official`: official PyTorch ``.npz`` (one file per tower, DINOv2-with-registers names) + our sidecar,
- :mod:`.scenic`: Scenic/JAX ``.npz`` (flattened Flax trees),
- :mod:`.hf`: Hugging Face transformers ``tipsv2`` folders (read and write),
- :mod:`.timm`: timm ``vit_*_patch14_reg1_tipsv2`` image-tower state dicts (read and write),
- :mod:`.pretrained`: ours (``save_pretrained`` folders),
- :mod:`.dpt`: DPT dense heads (official Scenic zips, the legacy flat layout, ours),
- :mod:`.detect`: which layout a set of keys is; :mod:`.common`: strict loading and shape inference;
- :mod:`.registry`: which writer ``tips-export --format`` calls.

Every foreign layout is converted to *our* state dict (timm key names for the image tower plus ``mask_token``,
official names for the text tower), then loaded strictly. Nothing is ever unpickled. This package
``__init__`` imports only the registry, so the model class can import it without a cycle.
"""

from .registry import HEAD_WRITERS, MODEL_WRITERS, get_writer, register_writer

__all__ = ["HEAD_WRITERS", "MODEL_WRITERS", "get_writer", "register_writer"]
