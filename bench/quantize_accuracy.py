"""How close each fast path stays to fp32 on a real checkpoint: the lowest cosine over a batch of real photos for
CLS1, CLS2 and the patch tokens, for bf16 autocast (``--dtype bfloat16``), ``tips.quantize(model, "int8")``
(dynamic int8 linear layers: oneDNN where the CPU has VNNI, else fbgemm), its fbgemm backend (7-bit activations)
and the ONNX Runtime fp32 and int8 graphs of ``tips-export --format onnx --int8``.

Trained ViTs have outlier channels that random weights lack, so measure on trained weights: the official ones
(``--model tips-v2-b14`` where they are cached) or the demo's checkpoint (``tips-demo``'s ``run/final``).

    python -m bench.quantize_accuracy --model tips-demo/run/final
    python -m bench.quantize_accuracy --model tips-v2-b14 --resolution 448
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import tips

from bench.machine import cpu_name

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")


def photos(resolution: int, preprocess) -> torch.Tensor:
    """scikit-image's real photos, preprocessed as the model does, at ``resolution`` → (8, 3, R, R)."""
    import skimage.data
    from PIL import Image

    images = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB")
        images.append(preprocess(image))
    return torch.stack(images)


def min_cosines(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, float]:
    """Lowest cosine per output: over images for the CLS tokens, over every patch of every image for patch tokens."""
    return {k: F.cosine_similarity(out[k].float().flatten(0, -2), ref[k].float().flatten(0, -2), dim=-1).min().item()
            for k in ref}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a checkpoint tips.load reads (trained weights)")
    p.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's own)")
    args = p.parse_args(argv)
    model = tips.prepare_for_inference(tips.load(args.model))
    size = args.resolution or model.image_size
    x = photos(size, tips.Preprocess(size, model.vision.patch_size))

    def outputs(f) -> dict[str, torch.Tensor]:
        return {"cls_alt": f.cls_alt, "cls_syn": f.cls_syn, "patch_tokens": f.patch_tokens}

    with torch.inference_mode():
        ref = outputs(model.encode_image(x))
        with tips.autocast(model, "bfloat16"):
            rows = {"bf16 autocast `--dtype bfloat16`": min_cosines(ref, outputs(model.encode_image(x)))}
        for backend in ("auto", "fbgemm"):
            quantized = tips.quantize(copy.deepcopy(model), "int8", backend=backend)
            engine = quantized.vision.blocks[0].mlp.fc1.engine
            label = f"int8 `--quantize int8` ({engine})" if backend == "auto" else f"int8 backend={backend!r}"
            rows[label] = min_cosines(ref, outputs(quantized.encode_image(x)))
    import onnxruntime

    vision_only = copy.deepcopy(model)
    vision_only.text = None
    with tempfile.TemporaryDirectory() as tmp:
        files = tips.save(vision_only, Path(tmp) / "onnx", format="onnx", image_size=size, int8=True)
        names = ["cls_alt", "cls_syn", "patch_tokens"]
        for label, key in (("ONNX Runtime fp32", "vision"), ("ONNX Runtime int8", "vision_int8")):
            session = onnxruntime.InferenceSession(str(files[key]), providers=["CPUExecutionProvider"])
            got = dict(zip(names, (torch.from_numpy(a) for a in session.run(names, {"images": x.numpy()}))))
            rows[label] = min_cosines(ref, got)
    print(f"{args.model} at {size} px, {len(PHOTOS)} scikit-image photos, {cpu_name()}, torch {torch.__version__}\n")
    print("| path | min cos CLS1 | min cos CLS2 | min cos patch tokens |\n|---|---|---|---|")
    for name, c in rows.items():
        print(f"| {name} | {c['cls_alt']:.5f} | {c['cls_syn']:.5f} | {c['patch_tokens']:.5f} |")


if __name__ == "__main__":
    main()
