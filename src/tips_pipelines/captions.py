"""``tips-caption``: append one synthetic caption per image to webdataset shards with a transformers captioner.

TIPS trains on a synthetic caption next to the alt-text of every image (PaliGemma 3B in the paper). This
job reads shards, captions their images in batches with any ``transformers`` image-to-text model (BLIP, Florence-2,
PaliGemma, … from a local folder or a cached hub id) and writes ``OUT/<same name>.tar`` with the caption appended to
``json["synthetic_captions"]``; every other member keeps its bytes. Shard i goes to process i % n under
``accelerate launch``. A finished shard has a marker ``OUT/<name>.tar.done.json`` and is never redone; outputs are
written atomically. Images that cannot be decoded keep their sample but get no caption, and are listed in
``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tips.io import DEFAULT_MAX_PIXELS, ImageDecodeError, ShardFile, decode_image, encode_sample, write_json_atomic
from tips.io.work_chunks import chunks_for_process, is_done, read_marker, write_marker
from tips.models import to_rgb
from tips.cli.errors import CliParser, add_debug_arg, renamed, run_main
from tips.cli.model_args import add_output_arg

from .tario import (
    ShardReadError,
    TarSample,
    dumps_json,
    iter_tar_samples,
    resolve_shards,
)

FORMAT = "tips-caption/1"
# transformers 5 maps BLIP, Florence-2 and PaliGemma to the first; the second serves transformers 4; the last takes
# remote-code checkpoints (the original Florence-2 repos, with --trust-remote-code)
MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


class CaptionerLoadError(RuntimeError):
    """The captioning model or its processor cannot be loaded."""


@dataclass
class CaptionReport:
    """Totals over all shards (from their done markers); ``missing`` lists shards without one."""

    shards: int
    samples: int = 0
    captioned: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def failed_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(f["reason"] for f in self.failures).items()))


# -------------------------------------------------------------------------------------------------------- captioner


class Captioner:
    """A loaded processor + model pair: PIL images in, one caption string per image out (greedy decoding)."""

    def __init__(self, processor: Any, model: Any, prompt: str | None, max_new_tokens: int) -> None:
        self.processor, self.model, self.prompt, self.max_new_tokens = processor, model, prompt, max_new_tokens
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and not getattr(model.config, "is_encoder_decoder", False):
            tokenizer.padding_side = "left"  # decoder-only models continue the prompt, so pad before it

    def __call__(self, images: list) -> list[str]:
        import torch

        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            kwargs.update(text=[self.prompt] * len(images), padding=True)
        inputs = self.processor(**kwargs).to(self.model.device, dtype=self.model.dtype)  # casts float tensors only
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] > prompt_ids.shape[1]:
            if torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids.to(out.device)):
                out = out[:, prompt_ids.shape[1] :]  # decoder-only models echo the prompt tokens
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [_strip_prompt(text, self.prompt) for text in texts]


def _strip_prompt(text: str, prompt: str | None) -> str:
    text = text.strip()
    if prompt and text.lower().startswith(prompt.strip().lower()):  # BLIP echoes its text prompt
        text = text[len(prompt.strip()) :].strip()
    return text


def _load_error(name: str, error: Exception) -> CaptionerLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
    why = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline
           else "it could not be fetched from the Hugging Face Hub (no network, or no such model)")
    first_line = str(error).splitlines()[0] if str(error) else ""
    return CaptionerLoadError(
        f"cannot load captioning model {name!r}: it is not a local folder, and {why}. Pass --model a local path to "
        f"a model saved with save_pretrained (config, weights and processor files). ({type(error).__name__}: "
        f"{first_line})"
    )


def _load_model(name: str, dtype: Any, trust_remote_code: bool) -> Any:
    import transformers

    refusals = []
    for class_name in MODEL_CLASSES:
        auto = getattr(transformers, class_name, None)  # AutoModelForVision2Seq is gone in transformers 5
        if auto is None:
            continue
        try:
            return auto.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError as e:  # "Unrecognized configuration class": try the next auto class
            refusals.append(f"{class_name}: {str(e).splitlines()[0]}")
    raise CaptionerLoadError(f"{name}: no image-to-text model class accepts this model ({'; '.join(refusals)})")


def load_captioner(
    name: str, device: Any, prompt: str | None = None, max_new_tokens: int = 40, trust_remote_code: bool = False
) -> Captioner:
    """Processor and model from a local folder or hub id, bf16 on GPU and fp32 on CPU, ready to caption."""
    import torch
    from transformers import AutoProcessor

    local = Path(name).expanduser()
    if not local.is_dir() and (local.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1):
        raise CaptionerLoadError(f"model folder {name!r} does not exist")
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = _load_model(name, dtype, trust_remote_code)
    except OSError as e:
        if local.is_dir():
            raise CaptionerLoadError(f"cannot load captioning model from {name}: {e}") from e
        raise _load_error(name, e) from e
    return Captioner(processor, model.to(device).eval(), prompt, max_new_tokens)


# ----------------------------------------------------------------------------------------------------------- shards


def _marker(out: Path, shard: Path) -> Path:
    return out / f"{shard.name}.done.json"


def _input(shard: Path) -> dict[str, Any]:
    return {"name": shard.name, "bytes": shard.stat().st_size}


class _SampleProblem(Exception):
    """A sample whose members cannot be captioned (no image, bad json); image failures are ImageDecodeError."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _caption_meta(sample: TarSample) -> dict:
    """The sample's json object, with a ``synthetic_captions`` list; raises _SampleProblem."""
    if sample.image_ext() is None:
        raise _SampleProblem("no_image", f"no image member in {list(sample.members)}")
    try:
        meta = json.loads(sample.members["json"]) if "json" in sample.members else {}
    except ValueError as e:
        raise _SampleProblem("bad_json", str(e)) from None
    if not isinstance(meta, dict) or not isinstance(meta.setdefault("synthetic_captions", []), list):
        raise _SampleProblem("bad_json", "member 'json' is not an object with a synthetic_captions list")
    return meta


def _caption_batch(batch: list[TarSample], captioner: Callable[[], Captioner], max_pixels: int) -> list[dict]:
    """Append a caption to each sample's json in place; returns the failures."""
    failures, images, targets = [], [], []
    for sample in batch:
        try:
            meta = _caption_meta(sample)
            images.append(to_rgb(decode_image(sample.members[sample.image_ext()], max_pixels=max_pixels), in_place=True))
        except (_SampleProblem, ImageDecodeError) as e:
            failures.append({"key": sample.key, "reason": e.reason, "detail": e.detail})
            continue
        targets.append((sample, meta))
    captions = captioner()(images) if images else []
    for (sample, meta), caption in zip(targets, captions):
        if not caption:
            failures.append({"key": sample.key, "reason": "empty_caption", "detail": "the model generated no text"})
            continue
        meta["synthetic_captions"].append(caption)
        sample.members["json"] = dumps_json(meta)
    return failures


def caption_shard(
    shard: Path, out: Path, captioner: Callable[[], Captioner], settings: dict[str, Any], max_pixels: int
) -> dict[str, Any]:
    """Write ``out/<shard name>`` with captions added, then its done marker; returns the marker."""
    writer = ShardFile(out / shard.name)
    failures, batch, read_error, samples = [], [], None, 0

    def flush() -> None:
        failures.extend(_caption_batch(batch, captioner, max_pixels))
        for sample in batch:
            writer.write(encode_sample(sample.key, sample.members.items()))
        batch.clear()

    try:
        try:
            for sample in iter_tar_samples(shard):
                samples += 1
                batch.append(sample)
                if len(batch) == settings["batch_size"]:
                    flush()
        except ShardReadError as e:  # keep what came before the damage; the report names the shard
            read_error = str(e)
        flush()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return write_marker(_marker(out, shard), settings, _input(shard), [out / shard.name], format=FORMAT,
                        samples=samples, captioned=samples - len(failures), failures=failures, read_error=read_error)


def _summarise(out: Path, paths: Sequence[Path], settings: dict[str, Any]) -> CaptionReport:
    report = CaptionReport(shards=len(paths))
    for shard in paths:
        marker = read_marker(_marker(out, shard))
        if marker is None or marker.get("settings") != settings:
            report.missing.append(shard.name)
            continue
        report.samples += marker["samples"]
        report.captioned += marker["captioned"]
        report.failures += [{"shard": shard.name, **f} for f in marker["failures"]]
        report.read_errors += [marker["read_error"]] if marker["read_error"] else []
    return report


def caption_shards(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str,
    *,
    prompt: str | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> CaptionReport:
    """Caption this process's share of ``shards`` into ``out_dir``; resumable. Returns totals over all shards."""
    from accelerate import Accelerator

    paths = resolve_shards(shards)
    out = Path(out_dir)
    if len({p.name for p in paths}) != len(paths):
        raise ValueError("input shards must have distinct file names: outputs keep the name")
    if any(p.resolve().parent == out.resolve() for p in paths):
        raise ValueError(f"{out} holds the input shards; write the captioned shards to another folder")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be positive")
    accelerator = Accelerator()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": model, "prompt": prompt, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "dtype": "bfloat16" if accelerator.device.type == "cuda" else "float32"}
    mine = chunks_for_process(paths, accelerator.process_index, accelerator.num_processes)
    todo = [p for p in mine if not is_done(_marker(out, p), settings, _input(p))]
    loaded: list[Captioner] = []

    def captioner() -> Captioner:  # loaded on first use: a fully resumed run needs no model
        if not loaded:
            loaded.append(load_captioner(model, accelerator.device, prompt, max_new_tokens, trust_remote_code))
        return loaded[0]

    if todo:
        captioner()  # fail before any shard is touched
    bar = tqdm(todo, unit="shard", desc=f"tips-caption [{accelerator.process_index}]",
               position=accelerator.process_index, disable=not progress)
    for shard in bar:
        marker = caption_shard(shard, out, captioner, settings, max_pixels)
        bar.set_postfix(captioned=marker["captioned"], failed=len(marker["failures"]))
    accelerator.wait_for_everyone()
    report = _summarise(out, paths, settings)
    if accelerator.is_main_process:
        write_json_atomic(out / "report.json", {
            "format": FORMAT, "settings": settings, "complete": not report.missing, "shards": report.shards,
            "samples": report.samples, "captioned": report.captioned, "failed": len(report.failures),
            "failed_by_reason": report.failed_by_reason(), "failures": report.failures,
            "read_errors": report.read_errors, "missing_shards": report.missing,
        })
    return report


# ------------------------------------------------------------------------------------------------------------- CLI


EXAMPLES = """\
examples:
  # shards written by tips-shards, captioned with a captioner saved locally (save_pretrained folder)
  tips-caption shards/ -o shards-captioned --captioner models/blip-image-captioning-base
  # Florence-2 with its task prompt, on 8 GPUs (shard i on process i % 8)
  accelerate launch --num_processes 8 -m tips_pipelines.captions 'shards/shard-{000000..000999}.tar' \\
      -o shards-captioned --captioner microsoft/Florence-2-large --prompt '<MORE_DETAILED_CAPTION>'
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-caption", description=__doc__.split("\n\n")[0].replace("``", ""),
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", help="input shards: a folder of .tar files, a brace pattern or a glob")
    add_output_arg(p, "output folder (captioned shards, done markers, report.json)", required=True)
    p.add_argument("--captioner", required=True, help="the captioning model: a local folder saved with "
                   "save_pretrained, or a cached hub id")
    renamed(p, "--model", "--captioner")
    p.add_argument("--prompt", help="text prompt, e.g. '<MORE_DETAILED_CAPTION>' (Florence-2), 'caption en' "
                   "(PaliGemma); none for BLIP's unconditional captions")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (older Florence-2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-caption``; 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    report = caption_shards(
        args.shards, args.out, args.captioner, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, max_pixels=args.max_pixels, trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress,
    )
    print(f"{report.captioned}/{report.samples} images captioned in {report.shards} shards; "
          f"{len(report.failures)} without a caption {report.failed_by_reason()} (see {args.out}/report.json)")
    if report.missing:
        print(f"tips-caption: {len(report.missing)} shards unfinished, e.g. {report.missing[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
