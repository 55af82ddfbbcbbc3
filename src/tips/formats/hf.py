"""Hugging Face transformers ``tipsv2`` folders (``google/tipsv2-*`` on the hub), as transformers 5 really writes and reads them.

``Tipsv2Model.save_pretrained`` writes ``config.json`` (``model_type: tipsv2``, nested ``vision_config`` /
``text_config``) and one ``model.safetensors`` in the hub key layout: the official PyTorch keys prefixed
``vision_encoder.`` / ``text_encoder.``, plus a scalar ``temperature`` (τ, dividing the cosine). transformers
writes the vision MLP as ``mlp.c_fc`` / ``mlp.c_proj`` (the hub files use ``fc1`` / ``fc2``; it reads both),
SwiGLU as ``mlp.w12`` (SiLU branch first) / ``mlp.w3``. ``Tipsv2VisionModel`` / ``Tipsv2TextModel`` write the
same keys without a prefix. Older configs without sub-configs (flat keys) are read from the shapes alone.

Our extras (``temperature_syn``, our full config) go in config.json's ``"tips"`` field, which transformers keeps.
A ``tipsv2_dpt`` folder's image tower (``vision_encoder.`` beside the heads, sub-config ``backbone_config``) loads
the same way; its heads are :mod:`.hf_dpt`'s.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from ..models.tips import TIPS
from ..models.variants import ModelConfig, TextConfig, VisionConfig
from .common import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    StateDict,
    load_into,
    model_config,
    read_checked,
    read_json,
    read_tensors,
    scalar,
    infer_text_config,
    infer_vision_config,
    split_text_temperature,
)
from .official import official_vision_to_ours

VISION_PREFIX, TEXT_PREFIX = "vision_encoder.", "text_encoder."
DPT_MODEL_TYPE = "tipsv2_dpt"
DPT_HEAD_PREFIXES = ("depth_head.", "normals_head.", "segmentation_head.")  # beside vision_encoder. in tipsv2_dpt files
EXTRA_FIELD = "tips"  # our fields inside config.json
CLS_SWAPPED = "cls_swapped"  # in EXTRA_FIELD: the folder's image tower has CLS2 first (a --cls syn sentence-transformers export)
_GELU = {"gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


# --------------------------------------------------------------------------- config.json → our configs
def _square(value: Any, field: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{source}: {field}={list(value)} is not square; TIPS position grids are square")
        value = value[0]
    return int(value)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """transformers' SwiGLU width: 2/3 of ``int(width * mlp_ratio)``, rounded up to a multiple of 8."""
    return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _numbers(fn):
    """Run a config converter so that a field holding a string, null or 0 raises an error naming the file."""

    def wrapped(c: Mapping[str, Any], source: str):
        if not isinstance(c, Mapping):
            raise ValueError(f"{source}: config.json sub-config must be an object, got {type(c).__name__}")
        try:
            return fn(c, source)
        except (TypeError, ValueError) as e:
            if str(e).startswith(source):
                raise
            raise ValueError(f"{source}: config.json {fn.__name__.split('_')[0]}_config: {e}") from None

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_numbers
def vision_config_from_hf(c: Mapping[str, Any], source: str) -> VisionConfig:
    """A transformers ``Tipsv2VisionConfig`` dict → our :class:`VisionConfig`; refuses what TIPS cannot represent."""
    for field, want in (("num_register_tokens", 1), ("qkv_bias", True), ("num_channels", 3)):
        if c.get(field, want) != want:
            raise ValueError(f"{source}: vision_config.{field}={c[field]!r}; a TIPS image tower needs {want!r}")
    width, ratio = int(c.get("hidden_size", 768)), float(c.get("mlp_ratio", 4))
    swiglu = bool(c.get("use_swiglu_ffn", False))
    act = c.get("hidden_act", "gelu")
    if not swiglu and act not in _GELU:
        raise ValueError(f"{source}: vision_config.hidden_act={act!r}; supported: {sorted(_GELU)}")
    patch = _square(c.get("patch_size", 14), "vision_config.patch_size", source)
    image = _square(c.get("image_size", 448), "vision_config.image_size", source)
    return VisionConfig(
        width=width,
        depth=int(c.get("num_hidden_layers", 12)),
        heads=int(c.get("num_attention_heads", 12)),
        mlp_hidden=swiglu_hidden(width, ratio) if swiglu else int(width * ratio),
        ffn="swiglu" if swiglu else "mlp",
        patch_size=patch,
        pos_grid=image // patch,
        ln_eps=float(c.get("layer_norm_eps", 1e-6)),
        gelu=_GELU.get(act, "erf"),
    )


@_numbers
def text_config_from_hf(c: Mapping[str, Any], source: str) -> TextConfig:
    """A transformers ``Tipsv2TextConfig`` dict → our :class:`TextConfig`."""
    if c.get("hidden_act", "relu") != "relu" or not c.get("scale_sqrt_depth", True):
        raise ValueError(f"{source}: text_config needs hidden_act='relu' and scale_sqrt_depth=true for a TIPS text tower "
                         f"(got {c.get('hidden_act')!r}, {c.get('scale_sqrt_depth')!r})")  # fmt: skip
    return TextConfig(
        width=int(c.get("hidden_size", 768)),
        depth=int(c.get("num_hidden_layers", 12)),
        heads=int(c.get("num_attention_heads", 12)),
        mlp_hidden=int(c.get("intermediate_size", 3072)),
        vocab_size=int(c.get("vocab_size", 32000)),
        max_len=int(c.get("max_position_embeddings", 64)),
        ln_eps=float(c.get("layer_norm_eps", 1e-5)),
    )


_CHECKED = {  # our field → (transformers field, tensor it is read from)
    "vision": {"width": ("hidden_size", "cls_token"), "depth": ("num_hidden_layers", "blocks.*"),
               "mlp_hidden": ("mlp_ratio / use_swiglu_ffn", "blocks.0.mlp.fc2.weight"),
               "ffn": ("use_swiglu_ffn", "blocks.0.mlp.fc1.weight"), "patch_size": ("patch_size", "patch_embed.proj.weight"),
               "pos_grid": ("image_size / patch_size", "pos_embed")},
    "text": {"width": ("hidden_size", "token_embedding.weight"), "depth": ("num_hidden_layers", "transformer.resblocks.*"),
             "mlp_hidden": ("intermediate_size", "transformer.resblocks.0.mlp.c_fc.weight"),
             "vocab_size": ("vocab_size", "token_embedding.weight")},
}  # fmt: skip


def check_against_shapes(cfg: VisionConfig | TextConfig, sd: Mapping[str, torch.Tensor], tower: str, prefix: str, source: str) -> None:
    """Every dimension config.json states must match the tensors; the error names the field, the key and the shapes."""
    inferred = (infer_vision_config if tower == "vision" else infer_text_config)(sd, 1, source)  # heads: not in shapes
    for field, (hf_field, key) in _CHECKED[tower].items():
        have, want = getattr(inferred, field), getattr(cfg, field)
        if have != want:
            key = key.replace(".fc2.", ".w3.").replace(".fc1.", ".w12.") if key not in sd and "blocks.0.mlp.w3.weight" in sd else key
            shape = tuple(sd[key].shape) if key in sd else f"{have} blocks"
            raise ValueError(
                f"{source}: config.json {tower}_config.{hf_field} gives {field}={want!r}, but {prefix}{key} has shape "
                f"{shape} ({field}={have!r}); fix config.json or the weights"
            )


# --------------------------------------------------------------------------- reading
def _vision_official_names(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers' vision MLP names (``c_fc``/``c_proj``) → official ``fc1``/``fc2``; SwiGLU names stay."""
    return {k.replace(".mlp.c_fc.", ".mlp.fc1.").replace(".mlp.c_proj.", ".mlp.fc2."): v for k, v in sd.items()}


def _split(sd: Mapping[str, torch.Tensor], model_type: str | None, source: str) -> tuple[StateDict | None, StateDict | None, float | None]:
    """→ (official-named vision dict or None, text dict or None, the stored ``temperature`` or None)."""
    sd = dict(sd)
    if model_type == DPT_MODEL_TYPE and any(k.startswith("backbone.") for k in sd):  # save_original_format=False
        from .hf_modules import vision_module_names_to_official

        sd = {VISION_PREFIX + k: v for k, v in vision_module_names_to_official(sd, "backbone.", source).items()}
    elif model_type == DPT_MODEL_TYPE or any(k.startswith(DPT_HEAD_PREFIXES) for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith(DPT_HEAD_PREFIXES)}  # the heads: tips.load_head
    tau_t = sd.pop("temperature", None)
    if any(k.startswith((VISION_PREFIX, TEXT_PREFIX)) for k in sd):
        vision = {k[len(VISION_PREFIX):]: v for k, v in sd.items() if k.startswith(VISION_PREFIX)}
        text = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
        other = sorted(k for k in sd if not k.startswith((VISION_PREFIX, TEXT_PREFIX)))
        if other:
            raise KeyError(f"{source}: unexpected keys outside {VISION_PREFIX}/{TEXT_PREFIX}/temperature: {other[:10]}")
        text, tau_in_text = split_text_temperature(text) if text else (None, None)
        tau = scalar(tau_t) if tau_t is not None else tau_in_text
        return _vision_official_names(vision) if vision else None, text, tau
    tau = scalar(tau_t)
    if model_type == "tipsv2_text_model" or ("token_embedding.weight" in sd and "cls_token" not in sd):
        text, tau_in_text = split_text_temperature(sd)
        return None, text, tau if tau is not None else tau_in_text
    if model_type == "tipsv2_vision_model" or "register_tokens" in sd:
        return _vision_official_names(sd), None, tau
    raise KeyError(f"{source}: not a transformers TIPSv2 layout (no {VISION_PREFIX}/{TEXT_PREFIX} keys, no register_tokens); "
                   f"first keys {sorted(sd)[:6]}")  # fmt: skip


def read_hf_folder(
    path: Path, tensors: Callable[[Path], StateDict] = read_tensors
) -> tuple[dict[str, Any], StateDict | None, StateDict | None, float | None, str]:
    """A folder (or its ``model.safetensors``) → (config.json dict or {}, vision dict, text dict, τ, source name)."""
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file (a transformers folder holds {WEIGHTS_NAME} + {CONFIG_NAME})")
    cfg_path = weights.parent / CONFIG_NAME
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    source = f"{weights} (config {cfg_path})" if cfg else str(weights)
    vision, text, tau = _split(tensors(weights), cfg.get("model_type"), source)
    return cfg, vision, text, tau, source


def _sub_configs(cfg: Mapping[str, Any]) -> tuple[dict | None, dict | None]:
    """(vision, text) transformers sub-config dicts, or None where config.json has none (flat/older configs)."""
    model_type = cfg.get("model_type")
    if model_type == "tipsv2_vision_model":
        return dict(cfg), None
    if model_type == "tipsv2_text_model":
        return None, dict(cfg)
    if model_type == DPT_MODEL_TYPE:
        return cfg.get("backbone_config"), None
    return cfg.get("vision_config"), cfg.get("text_config")


def _config_temperature(cfg: Mapping[str, Any]) -> float | None:
    for key in ("temperature", "temperature_init_value", "temperature_contrastive"):
        if isinstance(cfg.get(key), (int, float)):
            return float(cfg[key])
    return None


def load_hf(path: Path, heads: int | None = None, text: Path | None = None) -> TIPS:
    """A transformers ``tipsv2`` folder (``Tipsv2Model``, or a ``Tipsv2VisionModel`` with ``text=`` a
    ``Tipsv2TextModel`` folder) or its ``model.safetensors`` → :class:`TIPS`, architecture from config.json when
    it has sub-configs (checked against the header's shapes before anything is built), from the shapes otherwise."""
    return read_checked(_read, Path(path), heads, Path(text) if text is not None else None)


def read(path: Path, text: Path | None = None, heads: int | None = None) -> TIPS:
    """The transformers layout's reader (``READERS["transformers"]``)."""
    return load_hf(path, heads, text)


def _read(path: Path, heads: int | None, text: Path | None, tensors: Callable[[Path], StateDict]) -> TIPS:
    cfg, vision, text_sd, tau, source = read_hf_folder(path, tensors)
    text_cfg_dict = _sub_configs(cfg)[1]
    if text is not None:
        if text_sd is not None:
            raise ValueError(f"{source} already holds a text tower; drop text={text}")
        t_cfg, _, text_sd, t_tau, t_source = read_hf_folder(text, tensors)
        text_cfg_dict, tau = _sub_configs(t_cfg)[1], t_tau if t_tau is not None else _config_temperature(t_cfg)
    if vision is None:
        raise ValueError(f"{source} holds only a text tower (Tipsv2TextModel): load the image-tower folder and pass "
                         f"this one as text=, e.g. tips.load(vision_dir, text={str(Path(path))!r})")  # fmt: skip
    vision_cfg_dict = _sub_configs(cfg)[0]
    extra = cfg.get(EXTRA_FIELD) or {}
    if extra.get("model"):
        config = model_config(extra["model"], source, f"{EXTRA_FIELD}.model")
        if text_sd is None:
            config = ModelConfig(vision=config.vision, text=None, variant=config.variant, tokenizer=config.tokenizer)
    else:
        vcfg = vision_config_from_hf(vision_cfg_dict, source) if vision_cfg_dict else None
        tcfg = text_config_from_hf(text_cfg_dict, source) if (text_cfg_dict and text_sd is not None) else None
        if heads:
            vcfg = vcfg and dataclasses.replace(vcfg, heads=heads)
            tcfg = tcfg and dataclasses.replace(tcfg, heads=heads)
        vcfg = vcfg or infer_vision_config(vision, heads, source)
        tcfg = tcfg or (infer_text_config(text_sd, heads, source) if text_sd is not None else None)
        config = ModelConfig(vision=vcfg, text=tcfg, variant="custom")
    check_against_shapes(config.vision, vision, "vision", VISION_PREFIX, source)
    if text_sd is not None:
        check_against_shapes(config.text, text_sd, "text", TEXT_PREFIX, source)
    tau = tau if tau is not None else _config_temperature(cfg)
    model = TIPS(config)
    ours = official_vision_to_ours(vision, model.vision, source)
    model = load_into(model, ours, text_sd, (tau, extra.get("temperature_syn")), source)
    return swap_cls_tokens(model) if extra.get(CLS_SWAPPED) else model  # undo a --cls syn sentence-transformers export


def swap_cls_tokens(model: TIPS) -> TIPS:
    """Exchange the image tower's two CLS tokens in place (CLS1 ↔ CLS2). Neither carries a position and attention
    does not depend on token order, so the first token's output becomes exactly the other CLS's."""
    v = model.vision
    with torch.no_grad():
        cls_token = v.cls_token.detach().clone()
        v.cls_token.copy_(v.reg_token)
        v.reg_token.copy_(cls_token)
    return model


# --------------------------------------------------------------------------- writing
def mlp_ratio_for(width: int, hidden: int, swiglu: bool, source: str = "model") -> float:
    """The ``mlp_ratio`` from which transformers (and timm) rebuild exactly ``hidden`` (per-branch for SwiGLU)."""
    if swiglu:
        candidates = [4 * width] + list(range(max(1, (3 * (hidden - 7)) // 2), (3 * hidden) // 2 + 3))
        nominal = next((n for n in candidates if (int(n * 2 / 3) + 7) // 8 * 8 == hidden), None)
        if nominal is None:
            raise ValueError(f"{source}: SwiGLU hidden width {hidden} is not a multiple of 8, which transformers' "
                             "Tipsv2 SwiGLU cannot represent")  # fmt: skip
    else:
        nominal = hidden
    ratio = nominal / width
    return ratio if int(width * ratio) == nominal else (nominal + 0.5) / width


def hf_vision_config(model: TIPS) -> dict[str, Any]:
    """Our image-tower config → a transformers ``Tipsv2VisionConfig`` dict (also a ``tipsv2_dpt`` backbone_config)."""
    v = model.cfg.vision
    return dict(
        hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.heads,
        mlp_ratio=mlp_ratio_for(v.width, v.mlp_hidden, v.ffn == "swiglu"), use_swiglu_ffn=v.ffn == "swiglu",
        hidden_act="gelu" if v.gelu == "erf" else "gelu_pytorch_tanh", layer_norm_eps=v.ln_eps,
        image_size=model.image_size, patch_size=v.patch_size, num_register_tokens=1, qkv_bias=True,
    )  # fmt: skip


def hf_config_dicts(model: TIPS) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Our configs → transformers ``vision_config`` / ``text_config`` dicts; refuses what transformers lacks."""
    v, t = model.cfg.vision, model.cfg.text
    vision = hf_vision_config(model)
    if t is None:
        return vision, None
    if t.width != v.width:
        raise ValueError(f"transformers' Tipsv2Model needs equal tower widths; this model has image {v.width}, text "
                         f"{t.width}: export the image tower alone (model.text = None) or use --format pretrained")  # fmt: skip
    text = dict(
        hidden_size=t.width, num_hidden_layers=t.depth, num_attention_heads=t.heads, intermediate_size=t.mlp_hidden,
        vocab_size=t.vocab_size, max_position_embeddings=t.max_len, layer_norm_eps=t.ln_eps, hidden_act="relu",
        pad_token_id=0, scale_sqrt_depth=True,
    )  # fmt: skip
    return vision, text


def hub_vision_state_dict(model: TIPS, prefix: str = "") -> StateDict:
    """Our image tower in the hub key layout (official keys), each key prefixed with ``prefix``."""
    from .official import ours_to_official_vision

    vision = ours_to_official_vision({k: v.detach().cpu() for k, v in model.vision.state_dict().items()},
                                     model.cfg.vision.ffn == "swiglu")  # fmt: skip
    return {prefix + k: v.contiguous() for k, v in vision.items()}


def hub_state_dict(model: TIPS) -> StateDict:
    """Our weights in the hub key layout (official keys, prefixed when both towers are present)."""
    if model.text is None:
        return hub_vision_state_dict(model)
    out = hub_vision_state_dict(model, VISION_PREFIX)
    out.update({TEXT_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.text.state_dict().items()})
    if model.temperature is not None:
        out["temperature"] = torch.tensor(model.temperature, dtype=torch.float32)
    return out


def extra_field(model: TIPS) -> dict[str, Any]:
    """What config.json's ``"tips"`` field holds: our full model config, the second temperature, the tokenizer kind."""
    return {"model": model.cfg.to_dict(), "temperature_syn": model.temperature_syn,
            "tokenizer": None if model.tokenizer is None else model.tokenizer.kind}  # fmt: skip


def native_image_processor(cls: type, model: TIPS) -> Any:
    """A transformers image processor giving our preprocessing: resize to the native size (bilinear), [0, 1]."""
    size = model.image_size
    return cls(size={"height": size, "width": size}, do_resize=True, resample=2, do_rescale=True,
               rescale_factor=1 / 255, do_normalize=False)  # fmt: skip


def export_transformers(model: TIPS, out_dir: str | Path) -> dict[str, Path]:
    """Write a folder that transformers loads offline: ``AutoModel`` / ``Tipsv2Model`` (both towers) or
    ``Tipsv2VisionModel`` (an image tower alone), ``AutoImageProcessor`` and, when the model carries a
    SentencePiece tokenizer, ``AutoTokenizer`` / ``AutoProcessor``. Our extras go in config.json's ``"tips"``.

    Files: ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` (resize to the native size,
    bilinear, rescale to [0, 1], no mean/std) [+ ``tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json``,
    ``processor_config.json``]. The folder is written beside ``out_dir`` and swapped in atomically.
    """
    import shutil
    import warnings

    from safetensors.torch import save_file
    from transformers import Tipsv2Config, Tipsv2ImageProcessor, Tipsv2VisionConfig

    from ..io.atomic import staged_dir
    from .common import TOKENIZER_NAME

    out = Path(out_dir)
    vision_cfg, text_cfg = hf_config_dicts(model)
    if text_cfg is None:
        config = Tipsv2VisionConfig(**vision_cfg, architectures=["Tipsv2VisionModel"], **{EXTRA_FIELD: extra_field(model)})
    else:
        tau = model.temperature if model.temperature is not None else Tipsv2Config().temperature_init_value
        config = Tipsv2Config(vision_config=vision_cfg, text_config=text_cfg, temperature_init_value=tau,
                              architectures=["Tipsv2Model"], **{EXTRA_FIELD: extra_field(model)})  # fmt: skip
    with staged_dir(out) as tmp:
        config.save_pretrained(tmp)
        save_file(hub_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        image_processor = native_image_processor(Tipsv2ImageProcessor, model)
        image_processor.save_pretrained(tmp)
        tok = model.tokenizer
        if tok is not None and tok.kind == "sentencepiece" and model.text is not None:
            shutil.copyfile(tok.model_file, tmp / TOKENIZER_NAME)
            _write_tokenizer_and_processor(tmp, image_processor, tok.model_file, tok.length)
        elif model.text is not None:
            why = ("its tokenizer is our byte-level BPE (open_clip's vocabulary), which transformers' Tipsv2Tokenizer "
                   "cannot express (it reads a SentencePiece tokenizer.model)") if tok is not None else "it has no tokenizer"  # fmt: skip
            warnings.warn(f"{out}: no tokenizer files written because {why}; AutoProcessor/AutoTokenizer will not load "
                          "from this folder. Tokenize with tips (model.tokenize) and pass input_ids/attention_mask, "
                          "or attach a SentencePiece model (tips.load(..., tokenizer='tokenizer.model')).", stacklevel=2)  # fmt: skip
    return {"folder": out, "config": out / CONFIG_NAME, "weights": out / WEIGHTS_NAME}


def _write_tokenizer_and_processor(folder: Path, image_processor: Any, model_file: Path, length: int) -> None:
    """Tokenizer files giving our ids (see :mod:`.hf_tokenizer`) + a ``Tipsv2Processor`` over both."""
    from transformers import AutoTokenizer, Tipsv2Processor

    from .hf_tokenizer import write_tokenizer_files

    write_tokenizer_files(folder, model_file, length)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    Tipsv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))


write = export_transformers
