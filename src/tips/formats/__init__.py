"""tips.formats: every checkpoint layout, read and written; hub names and the cache; ``tips.load``,
``tips.load_head`` and ``tips.save``. May import ``tips.models`` and ``tips.io``.

- :mod:`.official`: official PyTorch ``.npz`` (one file per tower, DINOv2-with-registers names) + our sidecar,
- :mod:`.scenic`: Scenic/JAX ``.npz`` (flattened Flax trees),
- :mod:`.hf`: Hugging Face transformers ``tipsv2`` folders (read and write),
- :mod:`.timm`: timm ``vit_*_patch14_reg1_tipsv2`` image-tower state dicts (read and write),
- :mod:`.pretrained`: ours (config.json + model.safetensors),
- :mod:`.dpt`, :mod:`.hf_dpt`: DPT dense heads (official Scenic zips, the flat layout, ours, transformers),
- :mod:`.onnx`: ONNX image and text towers,
- :mod:`.detect`: which layout a path (``detect``) or a set of keys is; :mod:`.headers`: shapes from the files'
  own headers, and the tensors; :mod:`.common`: strict loading, shape inference, ``read_checked``;
- :mod:`.loading`, :mod:`.heads`: ``tips.load`` and ``tips.load_head``; :mod:`.hub`: official names and the cache;
- :mod:`.registry`: the writer each ``--format`` calls and the reader each detected layout calls, and ``tips.save``.

Every foreign layout is converted to *our* state dict (timm key names for the image tower plus ``mask_token``,
official names for the text tower), then loaded strictly; every reader first runs on the headers under the
``meta`` device, so a config that disagrees with the weights is refused before anything is allocated. Nothing is ever unpickled. Submodules are imported
where they are used, so ``import tips.formats`` is cheap.
"""
