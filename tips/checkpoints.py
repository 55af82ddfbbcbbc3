"""Every TIPS checkpoint format, converted in one place.

Formats (spec §4), detected from their keys:
- official PyTorch ``.npz`` (flat state dicts, one file per tower; DINOv2-with-registers names),
- Scenic/JAX ``.npz`` (flattened Flax trees, '/'-joined),
- Hugging Face ``google/tipsv2-*`` (one ``model.safetensors``, prefixes ``vision_encoder.`` / ``text_encoder.``),
- ours: a ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` [+ ``tokenizer.model``]).

Each foreign layout is first converted to *our* state dict (timm key names for the image tower plus
``mask_token``; official key names for the text tower), then loaded strictly: a missing, unexpected or
mis-shaped key raises an error naming it. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_file, replace_dir, write_json_atomic
from .models.tips import TIPS
from .models.variants import ModelConfig, TextConfig, VisionConfig, heads_for_width

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- reading files
def read_npz(path: str | os.PathLike) -> StateDict:
    """An ``.npz`` file → {key: tensor}; never unpickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: cannot read without unpickling ({e}); only plain numeric arrays are accepted") from e


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _require(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{source}: missing key {key!r} (found {len(sd)} keys, e.g. {sorted(sd)[:5]})")
    return sd[key]


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


# --------------------------------------------------------------------------- architecture from shapes
def infer_vision_config(sd: Mapping[str, torch.Tensor], heads: int | None = None, source: str = "checkpoint") -> VisionConfig:
    """Image-tower config from our/timm-named tensors (width, depth, FFN kind and hidden width, grid, patch)."""
    width = _require(sd, "cls_token", source).shape[-1]
    patch = _require(sd, "patch_embed.proj.weight", source).shape[-1]
    depth = _count(sd, r"blocks\.(\d+)\.norm1\.weight")
    rows = _require(sd, "pos_embed", source).shape[1]
    grid = int(round(rows**0.5))
    if grid * grid != rows:
        raise ValueError(f"{source}: pos_embed has {rows} patch rows, not a square grid")
    fc1 = _require(sd, "blocks.0.mlp.fc1.weight", source)
    fc2 = _require(sd, "blocks.0.mlp.fc2.weight", source)
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]
    return VisionConfig(
        width=width,
        depth=depth,
        heads=heads or heads_for_width(width),
        mlp_hidden=fc2.shape[1],
        ffn="swiglu" if swiglu else "mlp",
        patch_size=patch,
        pos_grid=grid,
    )


def infer_text_config(sd: Mapping[str, torch.Tensor], heads: int | None = None, source: str = "checkpoint") -> TextConfig:
    vocab, width = _require(sd, "token_embedding.weight", source).shape
    return TextConfig(
        width=width,
        depth=_count(sd, r"transformer\.resblocks\.(\d+)\.ln_1\.weight"),
        heads=heads or heads_for_width(width),
        mlp_hidden=_require(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
        vocab_size=vocab,
    )


# --------------------------------------------------------------------------- official PyTorch layout
def official_vision_to_ours(sd: Mapping[str, torch.Tensor], source: str = "vision file") -> StateDict:
    """Official PyTorch vision state dict → our (timm) names.

    ``pos_embed[:, 0]`` is added to the CLS token (the official encoder adds it there; the register token
    gets no position), ``register_tokens`` → ``reg_token``, SwiGLU ``w12``/``w3`` → ``fc1``/``fc2``.
    """
    pos = _require(sd, "pos_embed", source)
    out: StateDict = {}
    for k, v in sd.items():
        if k == "pos_embed":
            out[k] = v[:, 1:]
        elif k == "cls_token":
            out[k] = v + pos[:, :1]
        elif k == "register_tokens":
            out["reg_token"] = v
        else:
            out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return out


def ours_to_official_vision(sd: Mapping[str, torch.Tensor], swiglu: bool) -> StateDict:
    """Inverse of :func:`official_vision_to_ours` (row 0 of ``pos_embed`` written as zeros)."""
    out: StateDict = {}
    for k, v in sd.items():
        if k == "pos_embed":
            out[k] = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)
        elif k == "reg_token":
            out["register_tokens"] = v
        elif swiglu and ".mlp.fc" in k:
            out[k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = v
        else:
            out[k] = v
    return out


def split_text_temperature(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, float | None]:
    """Pop ``temperature`` / ``temperature_contrastive`` (a scalar dividing the cosine) from a text dict."""
    sd = dict(sd)
    tau = None
    for key in ("temperature", "temperature_contrastive", "contrastive_loss_temperature"):
        if key in sd:
            tau = float(sd.pop(key).reshape(-1)[0])
    return sd, tau


# --------------------------------------------------------------------------- Scenic / JAX layout
def _qkv_from_flax(block: Mapping[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flax q/k/v kernels (D, H, dh) and biases (H, dh) → packed (3D, D) weight, (3D) bias, heads."""
    weights, biases = [], []
    for name in ("query", "key", "value"):
        kernel = block[f"{prefix}/{name}/kernel"]
        D, H, dh = kernel.shape
        weights.append(kernel.reshape(D, H * dh).T)
        biases.append(block[f"{prefix}/{name}/bias"].reshape(-1))
    return torch.cat(weights, 0), torch.cat(biases, 0), H


def _scenic_blocks(sd: Mapping[str, torch.Tensor], root: str, names: dict[str, str], source: str) -> tuple[StateDict, int]:
    """Convert Scenic ``{root}/encoderblock_{i}`` trees; ``names`` maps our sub-module names to Flax ones."""
    out: StateDict = {}
    heads = 0
    depth = _count(sd, re.escape(root) + r"/encoderblock_(\d+)/")
    for i in range(depth):
        b = {k[len(f"{root}/encoderblock_{i}/"):]: v for k, v in sd.items() if k.startswith(f"{root}/encoderblock_{i}/")}
        p = names["prefix"].format(i=i)
        for ours, flax in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            out[f"{p}{names[ours]}.weight"] = b[f"{flax}/scale"]
            out[f"{p}{names[ours]}.bias"] = b[f"{flax}/bias"]
        w, bias, heads = _qkv_from_flax(b, "MultiHeadDotProductAttention_0")
        out[f"{p}{names['qkv_w']}"] = w
        out[f"{p}{names['qkv_b']}"] = bias
        o = b["MultiHeadDotProductAttention_0/out/kernel"]  # (H, dh, D)
        out[f"{p}{names['proj']}.weight"] = o.reshape(-1, o.shape[-1]).T
        out[f"{p}{names['proj']}.bias"] = b["MultiHeadDotProductAttention_0/out/bias"]
        if "FFNSwiGluFused_0/Dense_0/kernel" in b:
            f = "FFNSwiGluFused_0"
            out[f"{p}mlp.fc1.weight"] = torch.cat([b[f"{f}/Dense_0/kernel"].T, b[f"{f}/Dense_1/kernel"].T], 0)
            out[f"{p}mlp.fc1.bias"] = torch.cat([b[f"{f}/Dense_0/bias"], b[f"{f}/Dense_1/bias"]], 0)
            out[f"{p}mlp.fc2.weight"] = b[f"{f}/Dense_2/kernel"].T
            out[f"{p}mlp.fc2.bias"] = b[f"{f}/Dense_2/bias"]
        else:
            for ours, flax in ((names["fc1"], "Dense_0"), (names["fc2"], "Dense_1")):
                out[f"{p}{ours}.weight"] = b[f"MlpBlock_0/{flax}/kernel"].T
                out[f"{p}{ours}.bias"] = b[f"MlpBlock_0/{flax}/bias"]
    if depth == 0:
        raise KeyError(f"{source}: no {root}/encoderblock_0 found")
    return out, heads


_SCENIC_VISION_NAMES = {
    "prefix": "blocks.{i}.", "norm1": "norm1", "norm2": "norm2", "qkv_w": "attn.qkv.weight",
    "qkv_b": "attn.qkv.bias", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
}  # fmt: skip
_SCENIC_TEXT_NAMES = {
    "prefix": "transformer.resblocks.{i}.", "norm1": "ln_1", "norm2": "ln_2", "qkv_w": "attn.in_proj_weight",
    "qkv_b": "attn.in_proj_bias", "proj": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj",
}  # fmt: skip


def scenic_vision_to_ours(sd: Mapping[str, torch.Tensor], source: str = "Scenic vision file") -> tuple[StateDict, int]:
    """Scenic vision tree → our names and the head count read from the q kernel. Scenic's ``cls`` (1, 2, D)
    already holds the final CLS values (no position row), it has no LayerScale (γ = 1) and no mask token."""
    t = "encoder/ToTokenSequence_0/"
    out, heads = _scenic_blocks(sd, "encoder/transformer", _SCENIC_VISION_NAMES, source)
    kernel = _require(sd, t + "embedding/kernel", source)  # (p, p, 3, D)
    out["patch_embed.proj.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
    out["patch_embed.proj.bias"] = sd[t + "embedding/bias"]
    cls = _require(sd, t + "cls", source)
    out["cls_token"], out["reg_token"] = cls[:, 0:1], cls[:, 1:2]
    pos = _require(sd, t + "posembed_input", source)  # (1, G, G, D)
    out["pos_embed"] = pos.reshape(1, -1, pos.shape[-1])
    out["norm.weight"] = _require(sd, "encoder/encoder_norm/scale", source)
    out["norm.bias"] = sd["encoder/encoder_norm/bias"]
    width = kernel.shape[-1]
    out["mask_token"] = torch.zeros(1, width)
    for i in range(_count(out, r"blocks\.(\d+)\.")):
        out[f"blocks.{i}.ls1.gamma"] = torch.ones(width)
        out[f"blocks.{i}.ls2.gamma"] = torch.ones(width)
    return out, heads


def scenic_text_to_ours(sd: Mapping[str, torch.Tensor], source: str = "Scenic text file") -> tuple[StateDict, int, float | None]:
    out, heads = _scenic_blocks(sd, "transformer", _SCENIC_TEXT_NAMES, source)
    out["token_embedding.weight"] = _require(sd, "token_emb/emb_var", source)
    out["ln_final.weight"] = _require(sd, "text_encoder_norm/scale", source)
    out["ln_final.bias"] = sd["text_encoder_norm/bias"]
    _, tau = split_text_temperature({k: v for k, v in sd.items() if "temperature" in k})
    return out, heads, tau


# --------------------------------------------------------------------------- strict loading
def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``module``; any missing, unexpected or mis-shaped key raises an error naming it."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{source}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


def _log_first_contact(vision: Mapping[str, torch.Tensor], text: Mapping[str, torch.Tensor] | None, source: str) -> None:
    """What spec §4.7 asks us to record when a real file is first seen (logged, never asserted)."""
    gammas = [v for k, v in vision.items() if k.endswith(".gamma")]
    all_one = all(bool(torch.all(g == 1)) for g in gammas)
    log.info(
        "%s: layerscale gammas all 1: %s; cls_token norm %.4g; mask_token norm %.4g; grid %d; vocab %s",
        source, all_one, float(vision["cls_token"].norm()), float(vision.get("mask_token", torch.zeros(1)).norm()),
        int(round(vision["pos_embed"].shape[1] ** 0.5)), None if text is None else text["token_embedding.weight"].shape[0],
    )  # fmt: skip


# --------------------------------------------------------------------------- building models
def build_from_state_dicts(
    vision_sd: StateDict,
    text_sd: StateDict | None,
    temperatures: tuple[float | None, float | None] = (None, None),
    vision_heads: int | None = None,
    text_heads: int | None = None,
    config: ModelConfig | None = None,
    source: str = "checkpoint",
) -> TIPS:
    """Our-named state dicts → a :class:`TIPS` model, architecture inferred from shapes unless ``config`` is given."""
    if config is None:
        vcfg = infer_vision_config(vision_sd, vision_heads, source)
        tcfg = infer_text_config(text_sd, text_heads, source) if text_sd is not None else None
        config = ModelConfig(vision=vcfg, text=tcfg, variant="custom")
    model = TIPS(config)
    load_strict(model.vision, vision_sd, f"{source} (image tower)")
    if text_sd is not None:
        load_strict(model.text, text_sd, f"{source} (text tower)")
    model.set_temperatures(*temperatures)
    return model


def read_sidecar(vision_path: Path) -> dict[str, Any]:
    """The JSON written beside an exported official ``.npz`` (``<name>.tips.json``), or {}."""
    path = sidecar_path(vision_path)
    return json.loads(path.read_text()) if path.is_file() else {}


def sidecar_path(vision_path: Path) -> Path:
    return Path(vision_path).with_suffix(".tips.json")


def load_official_npz(vision_path: Path, text_path: Path | None, heads: int | None = None) -> TIPS:
    """Official PyTorch or Scenic ``.npz`` files (layout detected from keys)."""
    vsd = read_npz(vision_path)
    fmt = detect_format(vsd.keys())
    sidecar = read_sidecar(vision_path)
    v_heads = heads or sidecar.get("vision_heads")
    if fmt == "official_vision":
        vision = official_vision_to_ours(vsd, str(vision_path))
    elif fmt == "scenic_vision":
        vision, v_heads = scenic_vision_to_ours(vsd, str(vision_path))
        v_heads = heads or v_heads
    else:
        raise ValueError(f"{vision_path}: expected an official vision .npz, found a {fmt!r} layout")
    # Every official variant uses the same head count in both towers, so `heads` overrides both.
    text, tau, t_heads = None, None, heads or sidecar.get("text_heads")
    if text_path is not None:
        tsd = read_npz(text_path)
        tfmt = detect_format(tsd.keys())
        if tfmt == "official_text":
            text, tau = split_text_temperature(tsd)
        elif tfmt == "scenic_text":
            text, scenic_heads, tau = scenic_text_to_ours(tsd, str(text_path))
            t_heads = heads or scenic_heads
        else:
            raise ValueError(f"{text_path}: expected an official text .npz, found a {tfmt!r} layout")
    _log_first_contact(vision, text, str(vision_path))
    config = None
    if "config" in sidecar:
        config = ModelConfig.from_dict(sidecar["config"])
        if text is None:
            config = ModelConfig(vision=config.vision, text=None, variant=config.variant, tokenizer=config.tokenizer)
    tau_syn = sidecar.get("temperature_syn")
    model = build_from_state_dicts(vision, text, (tau, tau_syn), v_heads, t_heads, config, str(vision_path))
    return model


def load_hf(path: Path, heads: int | None = None) -> TIPS:
    """Hugging Face ``google/tipsv2-*`` layout: a folder (or its ``model.safetensors``) + ``config.json``."""
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    cfg_path = weights.parent / CONFIG_NAME
    hf_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    sd = load_file(str(weights))
    vision_raw = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    text_raw = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    other = sorted(k for k in sd if not k.startswith(("vision_encoder.", "text_encoder.")))
    if other:
        raise KeyError(f"{weights}: unexpected keys outside vision_encoder./text_encoder.: {other[:10]}")
    text_sd, tau = split_text_temperature(text_raw) if text_raw else (None, None)
    taus = [v for k, v in hf_cfg.items() if "temperature" in k and isinstance(v, (int, float))]
    tau = tau if tau is not None else (float(taus[0]) if taus else None)
    vision = official_vision_to_ours(vision_raw, str(weights))
    return build_from_state_dicts(vision, text_sd, (tau, None), heads, heads, None, str(weights))


# --------------------------------------------------------------------------- our format
def save_pretrained(model: TIPS, directory: str | os.PathLike, extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the SentencePiece file) atomically into ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "tips", "version": str(FORMAT_VERSION)})
    tokenizer = model.tokenizer
    tok_entry = None
    if tokenizer is not None:
        tok_entry = tokenizer.kind
        if tokenizer.kind == "sentencepiece":
            shutil.copyfile(tokenizer.model_file, tmp / TOKENIZER_NAME)
            tok_entry = TOKENIZER_NAME
    config = {
        "format": "tips",
        "version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "temperature": model.temperature,
        "temperature_syn": model.temperature_syn,
        "tokenizer": tok_entry,
        "image_size": model.image_size,
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    replace_dir(tmp, directory)
    return directory


def load_pretrained(directory: Path, tokenizer: Any = None) -> TIPS:
    """Read a ``save_pretrained`` folder. Extra tensors (e.g. ``heads.*``) are ignored here."""
    from .tokenizers import build_tokenizer

    cfg = json.loads((directory / CONFIG_NAME).read_text())
    if cfg.get("format") != "tips":
        raise ValueError(f"{directory / CONFIG_NAME}: not a tips checkpoint (format={cfg.get('format')!r})")
    config = ModelConfig.from_dict(cfg["model"])
    model = TIPS(config)
    sd = load_file(str(directory / WEIGHTS_NAME))
    own = {k: v for k, v in sd.items() if k.split(".", 1)[0] in ("vision", "text", "logit_scale_alt", "logit_scale_syn")}
    load_strict(model, own, str(directory / WEIGHTS_NAME))
    model.has_temperature = {"alt": cfg.get("temperature") is not None, "syn": cfg.get("temperature_syn") is not None}
    tok = tokenizer if tokenizer is not None else cfg.get("tokenizer")
    if tok == TOKENIZER_NAME:
        tok = directory / TOKENIZER_NAME
    model.tokenizer = build_tokenizer(tok)
    return model


# --------------------------------------------------------------------------- export to the official layout
def export_official(model: TIPS, out_dir: str | os.PathLike, name: str = "tips") -> dict[str, Path]:
    """Write ``{name}_vision.npz`` / ``{name}_text.npz`` with official keys only, plus ``{name}_vision.tips.json``.

    The sidecar holds what the official layout cannot (``temperature_syn``, the full config, head counts);
    :func:`tips.load` reads it when present. Writes are atomic.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    swiglu = model.cfg.vision.ffn == "swiglu"
    vision = ours_to_official_vision({k: v.detach().cpu() for k, v in model.vision.state_dict().items()}, swiglu)
    paths = {"vision": out / f"{name}_vision.npz"}
    _save_npz(paths["vision"], vision)
    if model.text is not None:
        text = {k: v.detach().cpu() for k, v in model.text.state_dict().items()}
        if model.temperature is not None:
            text["temperature"] = torch.tensor(model.temperature, dtype=torch.float32)
        paths["text"] = out / f"{name}_text.npz"
        _save_npz(paths["text"], text)
    sidecar = {
        "format": "tips-official-sidecar",
        "config": model.cfg.to_dict(),
        "temperature_syn": model.temperature_syn,
        "vision_heads": model.cfg.vision.heads,
        "text_heads": model.cfg.text.heads if model.cfg.text else None,
    }
    paths["sidecar"] = sidecar_path(paths["vision"])
    write_json_atomic(paths["sidecar"], sidecar, indent=2)
    return paths


def _save_npz(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    arrays = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    with atomic_file(path, suffix=".tmp.npz") as f:
        np.savez(f, **arrays)
