"""Hugging Face transformers ``tipsv2_dpt`` folders: a DPT head and the image tower it reads, in one file.

Written by ``Tipsv2DptForDepthEstimation`` / ``…ForNormalEstimation`` / ``…ForSemanticSegmentation``
``.save_pretrained`` (and ``…ForDensePrediction``, which holds all three heads). Layout, as transformers 5 writes it
by default (the hub layout): ``config.json`` with ``model_type: tipsv2_dpt`` and a nested ``backbone_config`` (a
``Tipsv2VisionConfig``); ``model.safetensors`` with the image tower under ``vision_encoder.`` (the keys of a
``Tipsv2VisionModel`` folder, read by :mod:`tips.formats.hf`) and each head under ``<task>_head.`` in the official
PyTorch decoder names without their ``dpt.`` (``depth_head.reassemble.readout_projects.0.weight``,
``depth_head.fusion_blocks.1.residual_unit.conv1.weight`` …), its per-pixel Linear as
``<task>_head.<task>_head.weight``. transformers renames these to its module names (``neck.reassemble_stage.…``,
``neck.fusion_stage.…``, ``decoder.head.…``) when it loads; ``save_pretrained(save_original_format=False)`` writes
those names, which we read too (:mod:`.hf_modules`).

Read: ``tips.load_head(folder)`` → :class:`~tips.models.dpt.DenseHead` (``task=`` picks one head of a
``…ForDensePrediction`` folder); ``tips.load(folder)`` → the image tower. Write, with the backbone the head reads::

    tips-export --model M --head H --format transformers -o DIR
    tips.formats.hf_dpt.export_transformers_dpt(head, DIR, model=model)   # the same, from Python

``Tipsv2DptFor<Task>.from_pretrained(DIR)`` (and ``AutoModelForDepthEstimation`` / ``…SemanticSegmentation``)
loads it offline; ``AutoImageProcessor`` gives a ``Tipsv2DptImageProcessor`` with our preprocessing.

Config fields honoured (read, and written by the export):

- ``backbone_config``: the image tower, as for a ``Tipsv2VisionModel`` folder. ``out_indices`` (else
  ``out_features``) → the head's ``layers``: stage k is the output of block k − 1 (stage 0, the embeddings, is
  refused). ``apply_layernorm`` must be true (the official heads read final-LayerNorm tokens).
  ``reshape_hidden_states`` is written false (the neck takes token sequences) and is not read.
- ``neck_hidden_sizes`` → per-level channels; ``fusion_hidden_size`` → fusion width.
- ``num_depth_bins``, ``min_depth``, ``max_depth`` → the bins and their centres; ``min_depth`` is also the shift
  added to ReLU(logits) before they are normalised (transformers' bin regressor), so it becomes ``depth_shift``.
- ``depth_decoder_activation``: ``"relu"`` (transformers' default) → ``project_relu``; ``"linear"`` → none, as in
  the official decoder (what the export writes for a head read from an official file).
- ``num_labels`` (the size of ``id2label``) → segmentation classes; the export names 150 classes after ADE20K.
- ``readout_activation`` must be a tanh GELU and ``reassemble_factors`` ``[4, 2, 1, 0.5]``: the official decoder
  has no other; anything else raises. ``semantic_loss_ignore_index`` (training only) is not used.

Every size config.json states is checked against the tensors; an error names the field, the key, both shapes and
the file. Our extras (the head's Scenic name, our model config) go in config.json's ``"tips"`` field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from ..models.dpt import TASKS, DenseHead, DPTConfig
from ..models.tips import TIPS
from ..models.variants import ModelConfig
from .common import CONFIG_NAME, WEIGHTS_NAME, StateDict, read_checked, read_json
from .dpt import infer_config, load_state_strict
from .hf import DPT_MODEL_TYPE, EXTRA_FIELD, VISION_PREFIX
from .hf_modules import dpt_module_names_to_ours

CLASSES = {
    "depth": "Tipsv2DptForDepthEstimation",
    "normals": "Tipsv2DptForNormalEstimation",
    "segmentation": "Tipsv2DptForSemanticSegmentation",
}
TASK_OF_CLASS = {name: task for task, name in CLASSES.items()}
FACTORS = [4, 2, 1, 0.5]
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")
DEFAULTS = {"neck_hidden_sizes": [96, 192, 384, 768], "fusion_hidden_size": 256, "num_depth_bins": 256,
            "min_depth": 0.001, "max_depth": 10.0, "out_indices": [3, 6, 9, 12]}  # Tipsv2DptConfig's  # fmt: skip


# --------------------------------------------------------------------------- key layouts
def hub_to_ours(sd: Mapping[str, Any], task: str) -> StateDict:
    """The ``<task>_head.*`` keys of a hub-layout file → our DenseHead names (``dpt.*``, ``head.*``)."""
    prefix, linear = f"{task}_head.", f"{task}_head.{task}_head."
    return {("head." + k[len(linear):]) if k.startswith(linear) else ("dpt." + k[len(prefix):]): v
            for k, v in sd.items() if k.startswith(prefix)}  # fmt: skip


def ours_to_hub(sd: Mapping[str, Any], task: str) -> StateDict:
    """Our DenseHead names → the hub layout transformers writes and reads (inverse of :func:`hub_to_ours`)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            out[f"{task}_head.{task}_head.{k[len('head.'):]}"] = v
        elif k.startswith("dpt."):
            out[f"{task}_head.{k[len('dpt.'):]}"] = v
        else:
            raise KeyError(f"{k!r} is not a key of the official DPT head (dpt.* / head.*)")
    return out


def heads_in(sd: Mapping[str, Any], architecture: str | None) -> dict[str, str]:
    """{task: how its keys are named} for the heads a file holds: ``"hub"`` (``<task>_head.``) or the module-name
    prefix (``""`` for a single-task class, whose task is the architecture's, or ``"<task>_"``)."""
    found = {t: "hub" for t in TASKS if any(k.startswith(f"{t}_head.") for k in sd)}
    found.update({t: f"{t}_" for t in TASKS if any(k.startswith(f"{t}_neck.") for k in sd)})
    if any(k.startswith("neck.") for k in sd) and architecture in TASK_OF_CLASS:
        found[TASK_OF_CLASS[architecture]] = ""
    return found


# --------------------------------------------------------------------------- config.json → DPTConfig
def _need(ok: bool, source: str, field: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"{source}: config.json {field}={value!r}; {why}")


def backbone_layers(backbone: Mapping[str, Any], source: str) -> tuple[int, ...]:
    """``out_indices`` (else ``out_features`` ``stageK``) → the 0-based blocks the head reads: stage k is the
    output of block k − 1."""
    stages = backbone.get("out_indices")
    if stages is None and backbone.get("out_features"):
        stages = [int(m.group(1)) if (m := re.fullmatch(r"stage(\d+)", s)) else 0 for s in backbone["out_features"]]
    stages = list(stages if stages is not None else DEFAULTS["out_indices"])
    depth = int(backbone.get("num_hidden_layers", 12))
    _need(len(stages) == 4 and all(1 <= int(s) <= depth for s in stages), source, "backbone_config.out_indices", stages,
          f"a DPT head reads 4 stages among 1..{depth} (stage k = block k, counted from 1; stage 0 is the embeddings)")
    return tuple(int(s) - 1 for s in stages)


def dpt_config_from_hf(cfg: Mapping[str, Any], task: str, source: str) -> DPTConfig:
    """A ``Tipsv2DptConfig`` dict → our :class:`DPTConfig` for ``task``; refuses what our decoder cannot express."""
    backbone = cfg.get("backbone_config") or {}
    _need(list(cfg.get("reassemble_factors", FACTORS)) == FACTORS, source, "reassemble_factors",
          cfg.get("reassemble_factors"), f"the official decoder resizes by {FACTORS}")
    _need(cfg.get("readout_activation", TANH_GELU[0]) in TANH_GELU, source, "readout_activation",
          cfg.get("readout_activation"), f"the official readout is a tanh GELU ({' or '.join(TANH_GELU)})")
    _need(backbone.get("apply_layernorm", True) is True, source, "backbone_config.apply_layernorm",
          backbone.get("apply_layernorm"), "the official heads read tokens after the final LayerNorm")
    width = int(backbone.get("hidden_size", 768))
    channels = tuple(int(c) for c in cfg.get("neck_hidden_sizes") or DEFAULTS["neck_hidden_sizes"])
    min_depth = float(cfg.get("min_depth", DEFAULTS["min_depth"]))
    project_relu = False
    if task == "depth":
        out = int(cfg.get("num_depth_bins", DEFAULTS["num_depth_bins"]))
        _need(out >= 2, source, "num_depth_bins", out, "a bin-classification head needs at least 2 bins")
        act = cfg.get("depth_decoder_activation", "relu")
        _need(act in ("relu", "linear"), source, "depth_decoder_activation", act, "supported: 'relu', 'linear'")
        project_relu = act == "relu"
    elif task == "normals":
        out = 3
    else:
        out = len(cfg["id2label"]) if cfg.get("id2label") else int(cfg.get("num_labels", 2))
    extra = (cfg.get(EXTRA_FIELD) or {}).get("dpt") or {}
    return DPTConfig(
        task=task, width=width, out_channels=out,
        reassemble=None if channels == (width // 8, width // 4, width // 2, width) else channels,
        fusion=int(cfg.get("fusion_hidden_size", DEFAULTS["fusion_hidden_size"])),
        layers=backbone_layers(backbone, source), min_depth=min_depth,
        max_depth=float(cfg.get("max_depth", DEFAULTS["max_depth"])), depth_shift=min_depth,
        project_relu=project_relu, head_key=extra.get("head_key") if extra.get("task") == task else None,
    )  # fmt: skip


def check_against_shapes(dcfg: DPTConfig, sd: Mapping[str, Any], file_key: Mapping[str, str], source: str) -> None:
    """Each size config.json states must match the tensors (``sd`` in our names; ``file_key`` gives the file's)."""
    have = infer_config(sd, dcfg.task, None, source)
    out_field = {"depth": "num_depth_bins", "normals": "3 normal components", "segmentation": "num_labels"}[dcfg.task]
    checks = [("backbone_config.hidden_size", dcfg.width, have.width, "dpt.reassemble.readout_projects.0.weight"),
              ("neck_hidden_sizes", dcfg.channels, have.channels, "dpt.reassemble.out_projections.{}.weight"),
              ("fusion_hidden_size", dcfg.fusion_width, have.fusion_width, "dpt.convs.0.weight"),
              (out_field, dcfg.out_channels, have.out_channels, "head.weight")]  # fmt: skip
    for field, want, got, key in checks:
        if want != got:
            level = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), 0) if isinstance(want, tuple) else 0
            key = key.format(level)
            raise ValueError(f"{source}: config.json {field} gives {want}, but {file_key.get(key, key)} has shape "
                             f"{tuple(sd[key].shape)} (so {got}); fix config.json or the weights")  # fmt: skip


# --------------------------------------------------------------------------- reading
def is_transformers_dpt(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("model_type") == DPT_MODEL_TYPE
    except (OSError, ValueError):
        return False


def _pick_task(found: Mapping[str, str], task: str | None, architecture: str | None, source: str) -> str:
    if not found:
        raise KeyError(f"{source}: no DPT head keys (<task>_head.* or neck.* / decoder.*) in a tipsv2_dpt file")
    if task is not None:
        if task not in found:
            raise ValueError(f"{source}: task={task!r} was asked for, but the file holds {sorted(found)} head(s)")
        return task
    if len(found) == 1:
        return next(iter(found))
    if architecture in TASK_OF_CLASS and TASK_OF_CLASS[architecture] in found:
        return TASK_OF_CLASS[architecture]
    raise ValueError(f"{source} holds {sorted(found)} heads ({architecture}): pass task= to pick one")


def load_transformers_head(folder: str | Path, task: str | None = None) -> DenseHead:
    """A ``tipsv2_dpt`` folder (or its ``model.safetensors``) → :class:`DenseHead` in eval mode."""
    folder = Path(folder)
    return read_checked(_read, folder.parent if folder.is_file() else folder, task)


def _read(folder: Path, task: str | None, tensors) -> DenseHead:
    weights, cfg_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not weights.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: a tipsv2_dpt folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg, source = read_json(cfg_path), f"{weights} (config {cfg_path})"
    sd = tensors(weights)
    architecture = (cfg.get("architectures") or [None])[0]
    found = heads_in(sd, architecture)
    task = _pick_task(found, task, architecture, source)
    if found[task] == "hub":
        ours = hub_to_ours(sd, task)
        file_key = dict(zip(ours, ours_to_hub(ours, task)))
    else:
        ours = dpt_module_names_to_ours(sd, found[task], source)
        file_key = {}
    try:
        dcfg = dpt_config_from_hf(cfg, task, source)
    except (TypeError, ValueError) as e:
        if str(e).startswith(source):
            raise
        raise ValueError(f"{source}: {e}") from None
    check_against_shapes(dcfg, ours, file_key, source)
    return load_state_strict(DenseHead(dcfg), ours, source)


# --------------------------------------------------------------------------- writing
def _refuse_unrepresentable(head: DenseHead) -> None:
    cfg = head.cfg
    if cfg.preset != "tips":
        raise ValueError(f"only the official ('tips') DPT preset has a transformers class; this head is {cfg.preset!r}")
    if cfg.task == "depth":
        if cfg.out_channels < 2:
            raise ValueError("transformers' Tipsv2Dpt depth head classifies bins; a 1-channel regression head has "
                             "no counterpart")
        if abs(cfg.shift - cfg.min_depth) > 1e-12:
            raise ValueError(f"transformers adds min_depth ({cfg.min_depth}) to ReLU(logits); this head adds "
                             f"{cfg.shift}: not representable")  # fmt: skip
    elif cfg.project_relu:
        raise ValueError(f"transformers' {cfg.task} decoder has no activation after 'project'; this head has a ReLU")


def hf_dpt_config(head: DenseHead, model: TIPS) -> Any:
    """Our head + the backbone it reads → a transformers ``Tipsv2DptConfig`` (see the module docstring)."""
    from transformers import Tipsv2DptConfig

    from .hf import hf_vision_config

    _refuse_unrepresentable(head)
    cfg, vision = head.cfg, model.cfg.vision
    if vision.width != cfg.width:
        raise ValueError(f"this DPT head was built for a tower of width {cfg.width}, the model's is {vision.width}")
    backbone = dict(hf_vision_config(model), model_type="tipsv2_vision_model", apply_layernorm=True,
                    reshape_hidden_states=False, out_indices=[i + 1 for i in cfg.layers_for(vision.depth)])  # fmt: skip
    kw: dict[str, Any] = dict(
        backbone_config=backbone, neck_hidden_sizes=list(cfg.channels), fusion_hidden_size=cfg.fusion_width,
        reassemble_factors=FACTORS, readout_activation=TANH_GELU[0], min_depth=cfg.min_depth,
        max_depth=cfg.max_depth, architectures=[CLASSES[cfg.task]],
    )  # fmt: skip
    if cfg.task == "depth":
        kw.update(num_depth_bins=cfg.out_channels, depth_decoder_activation="relu" if cfg.project_relu else "linear")
    elif cfg.task == "segmentation":
        from ..models.classes import ADE20K_CLASSES

        n = cfg.out_channels
        names = ADE20K_CLASSES if n == len(ADE20K_CLASSES) else [f"class_{i}" for i in range(n)]
        kw.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    extra = {"model": ModelConfig(vision=vision, variant=model.cfg.variant).to_dict(), "dpt": cfg.to_dict()}
    return Tipsv2DptConfig(**kw, **{EXTRA_FIELD: extra})


def export_transformers_dpt(
    head: DenseHead, out: str | Path, model: TIPS | None = None, name: str | None = None
) -> dict[str, Path]:
    """Write ``out`` as a ``tipsv2_dpt`` folder: ``config.json``, ``model.safetensors`` (``model``'s image tower
    and the head, hub layout), ``preprocessor_config.json`` (resize to the native size, bilinear, [0, 1]); swapped
    in whole. ``Tipsv2DptFor<Task>.from_pretrained(out)`` loads it offline."""
    from safetensors.torch import save_file
    from transformers import Tipsv2DptImageProcessor

    from ..io.atomic import staged_dir
    from .hf import hub_vision_state_dict, native_image_processor

    if model is None:
        raise ValueError("a tipsv2_dpt folder stores the backbone with the head: pass the model "
                         "(tips-export --model M)")
    if name is not None:
        raise ValueError("--name does not apply to --format transformers (a folder with fixed file names)")
    config = hf_dpt_config(head, model)
    tensors = hub_vision_state_dict(model, VISION_PREFIX)
    tensors.update(ours_to_hub({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, head.task))
    out = Path(out)
    with staged_dir(out) as tmp:
        config.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        native_image_processor(Tipsv2DptImageProcessor, model).save_pretrained(tmp)
    return {"folder": out, "config": out / CONFIG_NAME, "weights": out / WEIGHTS_NAME}


read, write = load_transformers_head, export_transformers_dpt
