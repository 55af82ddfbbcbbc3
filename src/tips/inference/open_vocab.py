"""Open-vocabulary segmentation: the official TIPS zero-shot protocol on any image, with an optional background
("none of these") threshold.

    seg = tips.open_vocab_segment(model, Image.open("street.jpg"), ["road", "car", "tree", "sky"])
    seg.labels        # (H, W) class ids at the image's size; 255 where no class passes a background threshold

The steps are those of the official notebook (google-deepmind/tips, ``pytorch/TIPS_zeroshot_segmentation.ipynb``):

1. the image is resized on the PIL image with PIL bicubic (antialiased when shrinking) so that its short side is
   ``size`` and its long side ``int(size * long / short)``; values in [0, 1], no mean / std;
2. patch features are the *value readout* of the last block (:func:`value_readout`); an image whose sides are not
   multiples of the patch is bicubic-resized up to the next multiple first;
3. each class is the mean over the 9 TCL templates of its normalised prompt embeddings, re-normalised;
4. scores are cosines (C, h, w); ``whole`` uses them as they are, ``slide`` averages, over windows of side
   ``window`` placed every ``stride`` pixels, each window's class softmax (no temperature) of its cosines resized to
   the window;
5. the score map is resized bilinearly to the output size and argmaxed.

A class may have synonyms (the papers' lists do): its cosine is the highest of its names' cosines. With a
``background_threshold`` T a pixel whose highest ``softmax(logit_scale · cos)`` is below T becomes the background
id (the preset's background class, else 255); in ``slide`` mode ``cos`` is the window average of the cosines.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ..io.atomic import atomic_file, atomic_path, write_text_atomic
from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError
from ..io.sources import decode_ref, find_images
from ..models.preprocess import to_rgb
from ..models.tips import TIPS, l2_normalize
from . import pictures as pics
from .extract import NoReadableImages
from .loaded import LoadedModel, as_loaded, resolve_device
from .precision import autocast, prepare_for_inference
from .predict import PredictResult, output_stem
from .regions import value_readout
from .tiling import Tiling, blend, plan_tiles

NONE_ID = 255  # the label of "none of these" when a class list has no background class of its own
MODES = ("whole", "slide")
RESIZES = ("pil", "torch")

# The 9 prompts of the official notebook: TCL's 7-template ImageNet subset plus "many" and a plural.
TCL_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)

ClassList = Sequence[Union[str, Sequence[str]]]


def render(template: str, class_name: str) -> str:
    """Put ``class_name`` into the template's ``{}`` (not ``str.format``: names may hold braces)."""
    return template.replace("{}", class_name)


# ----------------------------------------------------------------------------- image
def short_side_resize(image: Image.Image, size: int) -> Image.Image:
    """The notebook's resize on the PIL image: short side ``size``, long side ``int(size * long / short)`` (rounded
    down), PIL bicubic (antialiased when shrinking); returned as is when the short side already is ``size``."""
    width, height = image.size
    if min(width, height) == size:
        return image
    if width < height:
        return image.resize((size, int(size * height / width)), Image.BICUBIC)
    return image.resize((int(size * width / height), size), Image.BICUBIC)


def prepare_image(image: Image.Image, size: int, resize: str = "pil") -> torch.Tensor:
    """PIL image → (3, H, W) float32 in [0, 1], short side ``size``.

    resize "pil": :func:`short_side_resize` on the 8-bit image (the official protocol); "torch": the same sizes by
    antialiased bicubic on the float tensor, clamped to [0, 1] (faster on a GPU, pixels differ by a few levels).
    """
    rgb = to_rgb(image)
    if resize == "pil":
        return _to_tensor(short_side_resize(rgb, size))
    if resize != "torch":
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    x = _to_tensor(rgb)
    height, width = x.shape[-2:]
    if min(height, width) == size:
        return x
    out = (int(size * height / width), size) if width < height else (size, int(size * width / height))
    return F.interpolate(x[None], size=out, mode="bicubic", align_corners=False, antialias=True)[0].clamp_(0, 1)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


# ----------------------------------------------------------------------------- features and text
@dataclass
class ClassText:
    """Encoded classes: ``embeddings`` (Q, D) normalised, one row per name; ``owner`` (Q,) the class of each name;
    ``names[c]`` the first name of class ``c`` and ``synonyms[c]`` all of them."""

    synonyms: list[tuple[str, ...]]
    embeddings: torch.Tensor
    owner: torch.Tensor

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    def __len__(self) -> int:
        return len(self.synonyms)

    def class_scores(self, cos: torch.Tensor) -> torch.Tensor:
        """(B, Q, h, w) cosines per name → (B, C, h, w): each class's highest name."""
        if cos.shape[1] == len(self.synonyms):
            return cos
        owner = self.owner.to(cos.device)
        return torch.stack([cos[:, owner == c].amax(1) for c in range(len(self.synonyms))], 1)


def as_synonyms(classes: ClassList) -> list[tuple[str, ...]]:
    """Each class as a tuple of its names (a string is a class of one name); empty names are refused."""
    out = []
    for i, c in enumerate(classes):
        names = (c,) if isinstance(c, str) else tuple(c)
        names = tuple(n.strip() for n in names if n.strip())
        if not names:
            raise ValueError(f"class {i} has no name; give a non-empty name for every class")
        out.append(names)
    if not out:
        raise ValueError("no classes given; name at least one, e.g. ['road', 'car', 'sky']")
    return out


@torch.no_grad()
def encode_classes(model: TIPS, classes: ClassList, templates: Sequence[str] = TCL_TEMPLATES,
                   batch_size: int = 256) -> ClassText:
    """Per name: the mean over ``templates`` of the normalised prompt embeddings, re-normalised → :class:`ClassText`."""
    synonyms = as_synonyms(classes)
    names = [n for s in synonyms for n in s]
    owner = torch.tensor([c for c, s in enumerate(synonyms) for _ in s])
    prompts = [render(t, n) for n in names for t in templates]
    emb = torch.cat([l2_normalize(model.encode_text(prompts[i:i + batch_size]).float())
                     for i in range(0, len(prompts), batch_size)])
    emb = l2_normalize(emb.reshape(len(names), len(templates), -1).mean(1))  # (Q, D)
    return ClassText(synonyms, emb, owner)


def patch_cosines(model: TIPS, images: torch.Tensor, text: ClassText) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] → cosines (B, C, h, w) of the value-readout patches with each class.

    Sides that are not multiples of the patch are first bicubic-resized up to the next multiple (not clamped).
    """
    p = model.patch_size
    H, W = images.shape[-2:]
    size = (math.ceil(H / p) * p, math.ceil(W / p) * p)
    if size != (H, W):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
    feats = l2_normalize(value_readout(model, images).float())  # (B, h, w, D)
    cos = torch.einsum("bhwd,qd->bqhw", feats, text.embeddings.to(feats.device, feats.dtype))
    return text.class_scores(cos)


# ----------------------------------------------------------------------------- whole and slide
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along a side: every ``stride``, the last clamped to ``size - window`` (one at 0 if shorter)."""
    count = 1 + max(0, math.ceil((size - window) / stride))
    return [max(0, min(i * stride, size - window)) for i in range(count)]


@torch.no_grad()
def slide_scores(model: TIPS, image: torch.Tensor, text: ClassText, window: int, stride: int,
                 batch: int = 8, mean_cosines: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """image (3, H, W) → (probabilities (C, H, W), cosines (C, H, W) or None).

    probabilities: per window, the class softmax of the window's cosines resized bilinearly to the window, averaged
    where windows overlap (TCL / the notebook). cosines (with ``mean_cosines``): the resized cosines averaged alike.
    """
    _, H, W = image.shape
    boxes = [(y, x, min(window, H), min(window, W))
             for y in window_starts(H, window, stride) for x in window_starts(W, window, stride)]
    C = len(text)
    probs = image.new_zeros(C, H, W)
    cos_sum = image.new_zeros(C, H, W) if mean_cosines else None
    count = image.new_zeros(1, H, W)
    for i in range(0, len(boxes), batch):  # every window has the same size, so windows batch
        part = boxes[i:i + batch]
        crops = torch.stack([image[:, y:y + h, x:x + w] for y, x, h, w in part])
        cos = patch_cosines(model, crops, text).float()
        cos = F.interpolate(cos, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        for (y, x, h, w), c in zip(part, cos):
            probs[:, y:y + h, x:x + w] += c.softmax(0)
            count[:, y:y + h, x:x + w] += 1
            if cos_sum is not None:
                cos_sum[:, y:y + h, x:x + w] += c
    return probs / count, (cos_sum / count if cos_sum is not None else None)


@torch.no_grad()
def whole_scores(model: TIPS, image: torch.Tensor, text: ClassText) -> torch.Tensor:
    """image (3, H, W) → cosines (C, h, w) at the patch grid of the whole image (non-square when the image is)."""
    return patch_cosines(model, image[None], text)[0].float()


@torch.no_grad()
def tiled_scores(model: TIPS, image: torch.Tensor, text: ClassText, tiling: Tiling, batch: int = 8) -> torch.Tensor:
    """image (3, H, W) → cosines (C, h, w) at the whole image's patch grid, from overlapping tiles blended with
    :mod:`tips.inference.tiling`'s smooth window (sides first bicubic-resized up to multiples of the patch, as
    :func:`patch_cosines` does). One tile covering the image gives :func:`whole_scores`."""
    p = model.patch_size
    H, W = image.shape[-2:]
    size = (math.ceil(H / p) * p, math.ceil(W / p) * p)
    if size != (H, W):
        image = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0]
    plan = plan_tiles((size[0] // p, size[1] // p), tiling, p)
    th, tw = plan.tile

    def run(boxes: list[tuple[int, int]]) -> torch.Tensor:
        crops = torch.stack([image[:, y * p:(y + th) * p, x * p:(x + tw) * p] for y, x in boxes])
        return patch_cosines(model, crops, text).float()

    return blend(plan, run, 1, batch)


def resized_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """argmax over classes of ``scores`` (C, h, w) resized bilinearly (align_corners=False) to ``size`` → (H, W).

    Done a few classes at a time, so a large image with many classes never holds the full (C, H, W) map.
    """
    best_value, best_index = None, None
    for lo, part in _class_chunks(scores, size):
        value, index = part.max(0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # ties keep the lower class id, as argmax does
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + lo, best_index)
    return best_index


def resized_max_probability(cosines: torch.Tensor, size: tuple[int, int], logit_scale: float) -> torch.Tensor:
    """max over classes of softmax(logit_scale · cosines resized to ``size``) → (H, W), a few classes at a time."""
    top, lse = None, None
    for _, part in _class_chunks(cosines, size):
        logits = part * logit_scale
        m, s = logits.max(0).values, torch.logsumexp(logits, 0)
        top = m if top is None else torch.maximum(top, m)
        lse = s if lse is None else torch.logaddexp(lse, s)
    return torch.exp(top - lse)


def _class_chunks(scores: torch.Tensor, size: tuple[int, int]):
    step = max(1, (1 << 25) // max(1, size[0] * size[1]))  # about 128 MiB of float32 per chunk
    for lo in range(0, scores.shape[0], step):
        part = F.interpolate(scores[None, lo:lo + step].float(), size=size, mode="bilinear", align_corners=False)[0]
        yield lo, part


# ----------------------------------------------------------------------------- one call
@dataclass(frozen=True)
class OpenVocabOptions:
    """How :func:`open_vocab_segment` segments.

    mode: ``"slide"`` (windows, the notebook's default) or ``"whole"`` (one pass, non-square patch grid).
    size: short side of the resized image (default: the model's native size, 448 for the official models);
    window: slide window side (default ``size``); stride: default 3/4 of the window (336 for 448).
    templates: prompt templates (default the 9 TCL ones).
    background_threshold: pixels whose highest ``softmax(logit_scale · cos)`` is below it get ``background_id``;
    logit_scale: default the model's CLS1 scale (1 / temperature); background_id: default 255.
    resize: ``"pil"`` (the protocol) or ``"torch"`` (faster, differs slightly; :func:`prepare_image`).
    batch: windows per forward pass.
    tile / overlap: instead of ``mode``, cosines of overlapping tiles of ``tile`` pixels blended at the patch grid
        (:func:`tiled_scores`), then scored like ``whole``; for large ``size``.
    """

    mode: str = "slide"
    size: int | None = None
    window: int | None = None
    stride: int | None = None
    templates: tuple[str, ...] = TCL_TEMPLATES
    background_threshold: float | None = None
    logit_scale: float | None = None
    background_id: int = NONE_ID
    resize: str = "pil"
    batch: int = 8
    tile: int | None = None
    overlap: float = 0.25

    def geometry(self, model: TIPS) -> tuple[int, int, int]:
        """(size, window, stride) for ``model``: the notebook's 448 / 448 / 336 for a 448 model, else native, ¾."""
        size = self.size or model.image_size
        window = self.window or size
        stride = self.stride or max(1, window * 3 // 4)
        if min(size, window, stride) < 1:
            raise ValueError(f"size, window and stride must be positive, got {size}, {window}, {stride}")
        return size, window, stride

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if self.tile is not None:
            Tiling(self.tile, self.overlap).check(1)
        t = self.background_threshold
        if t is not None and not 0 <= t <= 1:
            raise ValueError(f"background_threshold is a probability in [0, 1], got {t}")


@dataclass
class OpenVocabSegmentation:
    """The result for one image.

    labels: (H, W) int64 class ids at ``size``; ``background_id`` where the threshold applied.
    scores: the protocol's map before the final resize: (C, H', W') averaged window softmaxes (slide) or (C, h, w)
        cosines at the patch grid (whole); ``labels`` (before the threshold) is its bilinear-resized argmax.
    cosines: (C, ·, ·) cosines the probabilities come from (the window average in slide mode).
    class_names / synonyms: per class id; logit_scale: ``s`` of ``softmax(s · cos)``.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    cosines: torch.Tensor
    synonyms: list[tuple[str, ...]]
    logit_scale: float | None
    background_id: int | None
    size: tuple[int, int]
    settings: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    def probabilities(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(C, H, W) softmax(logit_scale · cosines) resized bilinearly to ``size`` (default the label size)."""
        if self.logit_scale is None:
            raise ValueError("no logit scale: pass logit_scale (the model has no stored temperature)")
        cos = F.interpolate(self.cosines[None].float(), size=size or self.size, mode="bilinear", align_corners=False)[0]
        return (cos * self.logit_scale).softmax(0)


def model_logit_scale(model: TIPS) -> float | None:
    """1 / τ of CLS1, or None when the checkpoint stores no temperature."""
    tau = model.temperature
    return None if tau is None else 1.0 / tau


@torch.no_grad()
def open_vocab_segment(model: TIPS, image: Image.Image | torch.Tensor, classes: ClassList | ClassText,
                       options: OpenVocabOptions | None = None, size: tuple[int, int] | None = None,
                       ) -> OpenVocabSegmentation:
    """Segment ``image`` into ``classes`` with the official TIPS protocol (module docstring).

    image: a PIL image (resized as the protocol says), or a (3, H, W) tensor in [0, 1] taken as already resized.
    classes: names (``["road", "car"]``), tuples of synonyms (``[("person", "people"), "car"]``) or a
        :class:`ClassText` from :func:`encode_classes` (encode once for many images).
    size: (H, W) of ``labels``; default the image's own size (a PIL image's original size).
    """
    o = options or OpenVocabOptions()
    o.check()
    text = classes if isinstance(classes, ClassText) else encode_classes(model, classes, o.templates)
    param = next(model.parameters())
    if isinstance(image, Image.Image):
        out_size = size or (image.height, image.width)
        x = prepare_image(image, o.geometry(model)[0], o.resize)
    else:
        x = image
        out_size = size or tuple(x.shape[-2:])
    x = x.to(param.device, param.dtype)
    scale = o.logit_scale if o.logit_scale is not None else model_logit_scale(model)
    threshold = o.background_threshold
    if threshold is not None and scale is None:
        raise ValueError("background_threshold needs a logit scale: this model stores no temperature; pass logit_scale")
    _, window, stride = o.geometry(model)
    if o.tile is not None:
        scores = tiled_scores(model, x, text, Tiling(o.tile, o.overlap), o.batch)
        cosines = scores
    elif o.mode == "whole":
        scores = whole_scores(model, x, text)
        cosines = scores
    else:
        scores, cosines = slide_scores(model, x, text, window, stride, o.batch, mean_cosines=True)
    labels = resized_argmax(scores, out_size)
    if threshold is not None:
        labels[resized_max_probability(cosines, out_size, scale) < threshold] = o.background_id
    slide = o.mode == "slide" and o.tile is None
    settings = {"mode": "tiled" if o.tile is not None else o.mode, "tile": o.tile,
                "overlap": o.overlap if o.tile is not None else None, "size": o.geometry(model)[0],
                "window": window if slide else None, "stride": stride if slide else None, "resize": o.resize,
                "background_threshold": threshold, "logit_scale": scale, "templates": len(o.templates),
                "input_size": list(x.shape[-2:])}
    return OpenVocabSegmentation(labels, scores, cosines, text.synonyms, scale,
                                 o.background_id if threshold is not None else None, tuple(out_size), settings)


# ----------------------------------------------------------------------------- class lists and presets
def parse_classes(text: str) -> list[tuple[str, ...]]:
    """``"road, car, person|people"`` → [("road",), ("car",), ("person", "people")]: commas separate classes,
    ``|`` separates synonyms of one class."""
    return as_synonyms([tuple(n for n in part.split("|")) for part in text.split(",") if part.strip()])


def read_class_file(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """One class per line, synonyms separated by ``,`` or ``|`` (the layout of SCLIP's / ClearCLIP's class
    files); blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such class file (one class per line, synonyms separated by ', ')")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    rows = [ln for ln in lines if ln and not ln.startswith("#")]
    if not rows:
        raise ValueError(f"{path}: no classes; expected one class per line")
    return as_synonyms([tuple(ln.replace("|", ",").split(",")) for ln in rows])


@dataclass(frozen=True)
class OpenVocabPreset:
    """A benchmark's vocabulary and the paper setting it follows (``tips/inference/vocabularies/presets.json``).

    background_class: the class id thresholded pixels become (None: the set has no background class);
    logit_scale / background_threshold: ``softmax(s · cos) < T`` → background; short_side / window / stride: the
    paper's geometry; follows / also: where each number comes from.
    """

    name: str
    title: str
    synonyms: tuple[tuple[str, ...], ...]
    loader: str
    background_class: int | None
    logit_scale: float
    background_threshold: float | None
    short_side: int
    window: int
    stride: int
    follows: str
    also: str = ""

    @property
    def class_names(self) -> list[str]:
        """One name per class for tables and legends: "background" for the background class (whose synonyms, in
        SCLIP's lists, are words such as sky and wall), else the first synonym."""
        return ["background" if c == self.background_class else s[0] for c, s in enumerate(self.synonyms)]


def _vocabularies():
    return resources.files("tips.inference") / "vocabularies"


def preset_names() -> list[str]:
    """The names :func:`load_preset` accepts."""
    data = json.loads((_vocabularies() / "presets.json").read_text(encoding="utf-8"))
    return [k for k in data if not k.startswith("_")]


def load_preset(name: str) -> OpenVocabPreset:
    """A named preset (``voc21``, ``voc20``, ``context60``, ``context59``, ``coco_object``, ``coco_stuff171``,
    ``cityscapes``, ``ade20k``; dashes and underscores alike)."""
    data = json.loads((_vocabularies() / "presets.json").read_text(encoding="utf-8"))
    key = name.replace("-", "_").lower()
    if key.startswith("_") or key not in data:
        raise KeyError(f"unknown open-vocabulary preset {name!r}; known: {', '.join(preset_names())}")
    entry = dict(data[key])
    with resources.as_file(_vocabularies() / entry.pop("classes")) as path:
        synonyms = tuple(read_class_file(path))
    entry.pop("title", None)
    return OpenVocabPreset(name=key, title=data[key]["title"], synonyms=synonyms, **entry)


# ----------------------------------------------------------------------------- files for a folder of photos
@dataclass(frozen=True)
class OpenVocabRun:
    """How :func:`write_open_vocab` runs: device, pixel limit, precision, whether to store probabilities, how many
    pictures on the contact sheet, progress bar."""

    device: str | torch.device | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    dtype: str | torch.dtype = "float32"
    quantize: str | None = None
    probabilities: bool = False
    sheet: int = 16
    progress: bool = True


class OpenVocabResult(PredictResult):
    """What ``tips-predict open-vocab`` wrote: :class:`PredictResult`'s summary, in its own words."""

    verb = "segmented"
    named_files = ("contact_sheet.png", "classes.json")

    def written(self) -> str:
        return f"  wrote {len(self.ids)} label maps and pictures"


def label_png(labels: torch.Tensor, num_classes: int) -> Image.Image:
    """(H, W) class ids → palette PNG (index = class id; 255, "none of these", black)."""
    if num_classes > NONE_ID:
        raise ValueError(f"{num_classes} classes do not fit a palette PNG with 255 = none; use at most 255 classes")
    im = Image.fromarray(labels.cpu().numpy().astype(np.uint8))  # mode L; putpalette makes it P
    colours = np.zeros((256, 3), np.uint8)
    colours[:num_classes] = pics.palette(num_classes)
    im.putpalette(colours.ravel().tolist())
    return im


def write_open_vocab(sources: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike,
                     model: TIPS | LoadedModel | str | os.PathLike, classes: ClassList,
                     options: OpenVocabOptions | None = None, run: OpenVocabRun | None = None,
                     names: Sequence[str] | None = None) -> OpenVocabResult:
    """Segment every readable image of ``sources`` into ``classes`` and write, per image ``ID``: ``ID.labels.png``
    (palette PNG of class ids, 255 = none), ``ID.open-vocab.png`` (image, overlay, legend of the classes present),
    with ``run.probabilities`` ``ID.probabilities.safetensors`` ((C, H, W) float16); then ``classes.json``,
    ``contact_sheet.png`` and ``skipped.json``. Unreadable images are named and skipped. ``names``: one display name per
    class for the legend and ``classes.json`` (default each class's first synonym)."""
    o, r = options or OpenVocabOptions(), run or OpenVocabRun()
    o.check()
    refs = find_images(sources)
    if not refs:
        raise ValueError(f"no images found in {sources}")
    net = as_loaded(model).model
    if o.tile is not None:
        Tiling(o.tile, o.overlap).check(net.patch_size)
    prepare_for_inference(net, resolve_device(r.device), r.quantize, r.dtype)
    device = next(net.parameters()).device
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with autocast(device, r.dtype):
        text = encode_classes(net, classes, o.templates)
    if len(text) > NONE_ID:
        raise ValueError(f"{len(text)} classes; a label PNG holds at most {NONE_ID} (255 means none)")
    classes_path = out_dir / "classes.json"
    size, window, stride = o.geometry(net)
    names = list(names) if names is not None else text.names
    if len(names) != len(text):
        raise ValueError(f"{len(names)} display names for {len(text)} classes; give one name per class")
    record = {"classes": [{"id": c, "name": n, "synonyms": list(s)} for c, (n, s) in enumerate(zip(names, text.synonyms))],
              "none_id": o.background_id if o.background_threshold is not None else None,
              "mode": "tiled" if o.tile is not None else o.mode, "size": size, "window": window, "stride": stride,
              "tile": o.tile, "overlap": o.overlap if o.tile is not None else None,
              "background_threshold": o.background_threshold, "logit_scale": o.logit_scale or model_logit_scale(net),
              "templates": list(o.templates), "resize": o.resize}
    write_text_atomic(classes_path, json.dumps(record, indent=1))
    ids, files, skipped, sheet = [], [classes_path], [], []
    start = time.perf_counter()
    for ref in _progress(refs, r.progress):
        try:
            image = decode_ref(ref, r.max_pixels)
        except ImageDecodeError as e:
            skipped.append((ref.id, str(e)))
            continue
        with autocast(device, r.dtype):
            seg = open_vocab_segment(net, image, text, o)
        stem = output_stem(out_dir, ref.id)
        written, picture = _write_one(stem, image, seg, names, r.probabilities)
        files += written
        ids.append(ref.id)
        if len(sheet) < r.sheet:
            sheet.append((ref.id, picture))
    skipped_path = out_dir / "skipped.json"
    write_text_atomic(skipped_path, json.dumps([{"id": i, "reason": m} for i, m in skipped], indent=1))
    if not ids:
        raise NoReadableImages(f"no readable images: all {len(refs)} skipped (reasons in {skipped_path})")
    sheet_path = out_dir / "contact_sheet.png"
    with atomic_file(sheet_path) as f:
        pics.contact_sheet([p for _, p in sheet], [i for i, _ in sheet]).save(f, format="PNG")
    files += [sheet_path, skipped_path]
    return OpenVocabResult(ids, skipped, files, time.perf_counter() - start)


PICTURE_SIDE = 768  # long side of the pictures; label PNGs keep the image's size


def _picture(image: Image.Image, seg: OpenVocabSegmentation, names: Sequence[str]) -> Image.Image:
    rgb = to_rgb(image)
    scale = min(1.0, PICTURE_SIDE / max(rgb.size))
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BICUBIC)
    labels = seg.labels
    if tuple(labels.shape) != (rgb.height, rgb.width):
        labels = F.interpolate(labels[None, None].float(), size=(rgb.height, rgb.width), mode="nearest")[0, 0].long()
    return pics.open_vocab_picture(_to_tensor(rgb), labels.cpu(), names, seg.background_id)


def _write_one(stem: Path, image: Image.Image, seg: OpenVocabSegmentation, names: Sequence[str],
               probabilities: bool) -> tuple[list[Path], Image.Image]:
    labels_path = stem.with_name(stem.name + ".labels.png")
    with atomic_file(labels_path) as f:
        label_png(seg.labels, len(names)).save(f, format="PNG")
    picture_path = stem.with_name(stem.name + ".open-vocab.png")
    picture = _picture(image, seg, names)
    with atomic_file(picture_path) as f:
        picture.save(f, format="PNG")
    out = [labels_path, picture_path]
    if probabilities:
        path = stem.with_name(stem.name + ".probabilities.safetensors")
        with atomic_path(path) as tmp:
            save_file({"probabilities": seg.probabilities().half().cpu().contiguous()}, str(tmp),
                      metadata={"classes": json.dumps(seg.class_names), "logit_scale": str(seg.logit_scale)})
        out.append(path)
    return out, picture


def _progress(items, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc="open-vocab", disable=not enabled, leave=False)
