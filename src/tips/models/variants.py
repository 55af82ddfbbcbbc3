"""The one table of TIPS architectures.

Every dimension of every tower lives here; configs name a variant and override fields.
Numbers for the official variants come from the official image / text encoder code (``pytorch/image_encoder.py``,
``scenic/models/vit.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def check_positive_ints(cfg: Any, prefix: str, fields: tuple[str, ...], least: int = 1) -> None:
    """Each of ``fields`` must be an integer ≥ ``least`` (a config from a file may hold 0, a string or a float)."""
    for name in fields:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{prefix}.{name} must be an integer ≥ {least}, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Image tower dimensions. ``mlp_hidden`` is the *effective* hidden width (per branch for SwiGLU)."""

    width: int
    depth: int
    heads: int
    mlp_hidden: int
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu"
    patch_size: int = 14
    pos_grid: int = 32  # stored position grid is pos_grid x pos_grid
    ln_eps: float = 1e-6
    gelu: str = "erf"  # "erf" (PyTorch/timm) or "tanh" (Flax default)
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "vision", ("width", "heads", "mlp_hidden", "patch_size", "pos_grid"))
        check_positive_ints(self, "vision", ("depth",), least=0)
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"vision.ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        if self.gelu not in ("erf", "tanh"):
            raise ValueError(f"vision.gelu must be 'erf' or 'tanh', got {self.gelu!r}")
        if self.width % self.heads:
            raise ValueError(f"vision.width {self.width} is not divisible by vision.heads {self.heads}")


@dataclass(frozen=True)
class TextConfig:
    """Text tower dimensions."""

    width: int
    depth: int
    heads: int
    mlp_hidden: int
    vocab_size: int = 32000
    max_len: int = 64
    ln_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "text", ("width", "heads", "mlp_hidden", "vocab_size", "max_len"))
        check_positive_ints(self, "text", ("depth",), least=0)
        if self.width % self.heads:
            raise ValueError(f"text.width {self.width} is not divisible by text.heads {self.heads}")


@dataclass(frozen=True)
class ModelConfig:
    """Both towers plus the name of the variant they came from (informational)."""

    vision: VisionConfig
    text: TextConfig | None = None
    variant: str = "custom"
    tokenizer: str | None = None  # "sentencepiece", "bpe" or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}; expected {sorted(known)}")
        vision = VisionConfig(**d["vision"])
        text = TextConfig(**d["text"]) if d.get("text") else None
        return cls(vision=vision, text=text, variant=d.get("variant", "custom"), tokenizer=d.get("tokenizer"))


def _swiglu_hidden(nominal: int) -> int:
    """DINOv2's SwiGLU sizing: 2/3 of the nominal width, rounded up to a multiple of 8."""
    return (int(nominal * 2 / 3) + 7) // 8 * 8


VARIANTS: dict[str, ModelConfig] = {
    "s14": ModelConfig(
        VisionConfig(width=384, depth=12, heads=6, mlp_hidden=1536),
        TextConfig(width=384, depth=12, heads=6, mlp_hidden=1536),
        variant="s14",
    ),
    "b14": ModelConfig(
        VisionConfig(width=768, depth=12, heads=12, mlp_hidden=3072),
        TextConfig(width=768, depth=12, heads=12, mlp_hidden=3072),
        variant="b14",
    ),
    "l14": ModelConfig(
        VisionConfig(width=1024, depth=24, heads=16, mlp_hidden=4096),
        TextConfig(width=1024, depth=12, heads=16, mlp_hidden=4096),
        variant="l14",
    ),
    "so400m14": ModelConfig(
        VisionConfig(width=1152, depth=27, heads=16, mlp_hidden=4304),
        TextConfig(width=1152, depth=27, heads=16, mlp_hidden=4304),
        variant="so400m14",
    ),
    "g14": ModelConfig(
        VisionConfig(width=1536, depth=40, heads=24, mlp_hidden=_swiglu_hidden(6144), ffn="swiglu"),
        TextConfig(width=1536, depth=12, heads=24, mlp_hidden=6144),
        variant="g14",
    ),
    # Test / demo sizes: a CPU step takes a fraction of a second.
    "tiny": ModelConfig(
        VisionConfig(width=192, depth=4, heads=3, mlp_hidden=768, pos_grid=16),
        TextConfig(width=192, depth=4, heads=3, mlp_hidden=768, vocab_size=49408),
        variant="tiny",
        tokenizer="bpe",
    ),
    "tiny_p8": ModelConfig(
        VisionConfig(width=192, depth=4, heads=3, mlp_hidden=768, patch_size=8, pos_grid=8),
        TextConfig(width=192, depth=4, heads=3, mlp_hidden=768, vocab_size=49408),
        variant="tiny_p8",
        tokenizer="bpe",
    ),
}

# Heads per width for the official widths; unknown widths fall back to width // 64.
HEADS_BY_WIDTH: dict[int, int] = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24, 192: 3}


def heads_for_width(width: int) -> int:
    """Attention heads for a tower of this width (official table, else 64-wide heads)."""
    return HEADS_BY_WIDTH.get(width, max(1, width // 64))


def get_variant(name: str, **overrides: Any) -> ModelConfig:
    """Look up a variant by name (``"b14"``, ``"tips_b14"``, ``"tiny"`` …) and override fields.

    Overrides use ``vision.<field>``/``text.<field>`` keys or nested dicts ``vision={...}``.
    """
    key = name.lower().removeprefix("tips_").removeprefix("tips-").replace("so14", "so400m14")
    if key not in VARIANTS:
        raise KeyError(f"unknown TIPS variant {name!r}; known: {sorted(VARIANTS)}")
    return override_config(VARIANTS[key], **overrides)


def override_config(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """Return ``cfg`` with fields replaced; ``vision.width=…`` style or nested dicts."""
    vision: dict[str, Any] = {}
    text: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for k, v in overrides.items():
        if k == "vision" and isinstance(v, dict):
            vision.update(v)
        elif k == "text" and isinstance(v, dict):
            text.update(v)
        elif k.startswith("vision."):
            vision[k.split(".", 1)[1]] = v
        elif k.startswith("text."):
            text[k.split(".", 1)[1]] = v
        else:
            top[k] = v
    new_vision = dataclasses.replace(cfg.vision, **vision) if vision else cfg.vision
    new_text = cfg.text
    if text:
        if cfg.text is None:
            raise ValueError("cannot override text fields of a vision-only config")
        new_text = dataclasses.replace(cfg.text, **text)
    return dataclasses.replace(cfg, vision=new_vision, text=new_text, **top)
