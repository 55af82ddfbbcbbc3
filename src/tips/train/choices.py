"""The choices of the training config as Enums, so that OmegaConf refuses a value that is not one of them while the
YAML is read, naming the key (``loss.contrastive: softmax`` in a recipe and ``loss.contrastive=softmax`` as an
override still work: the members are strings, equal to, printed and serialised as their values)."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string choice: compares, hashes, prints and serialises as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Contrastive(Choice):
    softmax = "softmax"
    sigmoid = "sigmoid"  # SigLIP


class ContrastiveView(Choice):
    unmasked = "unmasked"
    masked = "masked"  # CLS tokens from the masked pass (one student pass fewer)


class Centering(Choice):
    ema = "ema"
    sinkhorn_knopp = "sinkhorn_knopp"


class CenterInit(Choice):
    first_batch = "first_batch"
    zeros = "zeros"  # DINO


class MimTarget(Choice):
    features = "features"
    pixels = "pixels"  # MAE-style decoder


class Reduction(Choice):
    mean = "mean"
    sum = "sum"


class Spread(Choice):
    none = "none"
    gor = "gor"  # EmbeddingGemma
    koleo = "koleo"  # DINOv2


class TeacherMode(Choice):
    ema = "ema"  # full EMA
    head_only_ema = "head_only_ema"  # TIPSv2
    frozen = "frozen"  # distillation


class Optimizer(Choice):
    adamw = "adamw"
    adafactor = "adafactor"


class MixedPrecision(Choice):
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


class CompileBackend(Choice):
    inductor = "inductor"
    aot_eager = "aot_eager"  # compiles in seconds (tests)
    eager = "eager"


class Parallel(Choice):
    ddp = "ddp"
    fsdp = "fsdp"


class RetentionLoss(Choice):
    cosine = "cosine"
    smooth_l1 = "smooth_l1"
