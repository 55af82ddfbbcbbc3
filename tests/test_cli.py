"""The command-line surface: every console script shows examples that parse, writes where -o/--out says, and
names its model with the same flags (tips.cli.model_args); the PCA pictures of tips-extract and tips-probe agree."""

import argparse
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import tips
from tips.cli.model_args import add_model_args, model_from_args
from tips.inference.loaded import MODEL_CHOICE_ERROR, ModelArgumentError

from formats_spm import VOCAB, train_tiny_spm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PROBE_SUBCOMMANDS = ("segmentation", "depth", "normals", "zero-shot", "retrieval", "knn", "zero-shot-seg", "compression")
# Modules that `accelerate launch -m MODULE` runs in the examples, and the command each one is.
MODULE_COMMANDS = {"tips.cli.train": "tips-train", "tips_pipelines.captions": "tips-caption"}


def entry(script: str):
    module, _, name = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), name)


def help_text(capsys, script: str, *args: str) -> str:
    try:
        entry(script)([*args, "--help"])
    except SystemExit as e:
        assert e.code in (0, None)
    return capsys.readouterr().out


def example_commands(text: str) -> list[list[str]]:
    """The argv of each command in the ``examples:`` epilog (continuation lines joined, comments dropped)."""
    body = text.split("\nexamples:\n", 1)[1].replace("\\\n", " ")
    return [shlex.split(line) for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_console_scripts_are_the_known_ones():
    assert set(SCRIPTS) == {"tips-extract", "tips-export", "tips-predict", "tips-shards", "tips-caption",
                            "tips-scenes", "tips-train", "tips-probe", "tips-demo", "tips-merge", "tips-download",
                            "tips-index", "tips-search", "tips-serve"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_help_shows_an_example_and_the_out_flag(capsys, script):
    text = help_text(capsys, script)
    assert "\nexamples:\n" in text, f"{script} --help has no examples"
    assert any(argv[0] == script for argv in example_commands(text)) or script == "tips-train"
    # tips-probe's subcommands write (checked below), its top level only dispatches; tips-serve writes nothing
    if script not in ("tips-probe", "tips-serve"):
        assert "-o DIR, --out DIR" in text, f"{script} --help has no -o/--out"


@pytest.mark.parametrize("sub", PROBE_SUBCOMMANDS)
def test_every_tips_probe_subcommand_takes_the_same_flags(capsys, sub):
    text = help_text(capsys, "tips-probe", sub)
    assert "\nexamples:\n" in text
    assert any(argv[:2] == ["tips-probe", sub] for argv in example_commands(text))
    for flag in ("-o DIR, --out DIR", "--config YAML", "KEY=VALUE", "--model CKPT", "--random-init VARIANT",
                 "--tokenizer TOKENIZER", "--text NPZ", "--seed SEED", "--dtype", "--quantize"):
        assert flag in text, f"tips-probe {sub} --help lacks {flag}"


def parse_example(argv: list[str]) -> argparse.Namespace | None:
    """Parse one example with its command's own parser (nothing runs); None for a non-TIPS command."""
    if argv[0] == "torchrun":  # torchrun [its flags] --no-python COMMAND ...
        argv = argv[argv.index("--no-python") + 1:]
    if argv[:2] == ["accelerate", "launch"]:
        module = argv[argv.index("-m") + 1]
        argv = [MODULE_COMMANDS[module], *argv[argv.index("-m") + 2:]]
    command, args = argv[0], argv[1:]
    if command not in SCRIPTS:
        assert command in ("python",), f"unexpected command in an example: {command}"
        return None
    if command == "tips-probe":
        from tips_eval import cli
        from tips_eval.options import parse_task_args
        from tips_eval.probes.config import load_probe_config

        sub, rest = args[0], args[1:]
        if sub in cli.DENSE:
            ns = cli.dense_parser(sub).parse_args(rest)
            load_probe_config(ns.config, ns.overrides, **cli.flag_overrides(sub, ns))  # the override keys exist
            return ns
        return parse_task_args(importlib.import_module(cli.FORWARDED[sub]).build_parser(), rest)
    if command == "tips-scenes":
        from tips_pipelines.scenes.cli import parse_args

        return parse_args(args)
    module = importlib.import_module(SCRIPTS[command].partition(":")[0])
    return module.build_parser().parse_args(args)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_example_in_the_help_parses(capsys, monkeypatch, script):
    monkeypatch.chdir(ROOT)  # examples name configs/ relative to the repository
    texts = [help_text(capsys, script)]
    if script == "tips-probe":
        texts += [help_text(capsys, script, sub) for sub in PROBE_SUBCOMMANDS]
    for text in texts:
        for argv in example_commands(text):
            ns = parse_example(argv)
            if ns is not None and "-o" in argv:
                assert Path(ns.out) == Path(argv[argv.index("-o") + 1])


def test_extract_and_predict_examples_run(tmp_path, monkeypatch, capsys):
    """The offline examples of tips-predict's help (tips-extract --demo, then random-weight depth) really run."""
    monkeypatch.chdir(tmp_path)
    commands = example_commands(help_text(capsys, "tips-predict"))[:2]
    assert [c[0] for c in commands] == ["tips-extract", "tips-predict"]
    for argv in commands:
        assert entry(argv[0])([*argv[1:], "--no-progress"]) == 0
    assert (tmp_path / "out" / "demo" / "features-00000.safetensors").is_file()
    assert (tmp_path / "out" / "depth" / "contact_sheet.png").is_file()


def test_output_folder_has_one_spelling():
    from tips.cli.extract import build_parser as extract_parser
    from tips_eval.demo import build_parser as demo_parser
    from tips_pipelines.shards import build_parser as shards_parser

    assert extract_parser().parse_args(["x", "-o", "a"]).out == Path("a")
    for parser, argv in ((extract_parser(), ["x", "--output", "a"]), (demo_parser(), ["--workdir", "w"]),
                         (shards_parser(), ["legacy", "--from-shards", "s"])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# ----------------------------------------------------------------------------------------- model from arguments
def model_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(list(argv))


def vision_state(model: tips.TIPS) -> dict[str, torch.Tensor]:
    return model.vision.state_dict()


def test_random_init_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a = model_from_args(model_args("--random-init", "tiny", "--seed", "3"))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = model_from_args(model_args("--random-init", "tiny", "--seed", "3"))
    c = model_from_args(model_args("--random-init", "tiny", "--seed", "4"))
    key = "patch_embed.proj.weight"
    assert torch.equal(vision_state(a.model)[key], vision_state(b.model)[key])
    assert not torch.equal(vision_state(a.model)[key], vision_state(c.model)[key])
    assert a.name == "random-init:tiny:seed=3"
    assert a.record == {"random_init": "tiny", "tokenizer": "bpe", "seed": 3}
    assert a.model.tokenizer.kind == "bpe" and a.model.cfg.text.vocab_size == a.model.tokenizer.vocab_size
    assert not a.model.training


def test_tokenizer_override_sizes_the_vocabulary_and_keeps_the_image_tower(tmp_path):
    spm = train_tiny_spm(tmp_path)
    default = model_from_args(model_args("--random-init", "tiny"))
    custom = model_from_args(model_args("--random-init", "tiny", "--tokenizer", str(spm), "--dtype", "bfloat16"))
    assert custom.model.tokenizer.kind == "sentencepiece"
    assert custom.model.cfg.text.vocab_size == VOCAB
    assert custom.model.encode_text(["a photo of a cat"]).shape == (1, custom.model.width)
    for k, v in vision_state(default.model).items():  # the image tower is built before the text tower
        assert torch.equal(v, vision_state(custom.model)[k]), k
    assert custom.record["tokenizer"] == str(spm.resolve()) and custom.record["dtype"] == "bfloat16"


def test_official_variant_without_a_tokenizer_gets_bpe():
    loaded = model_from_args(model_args("--random-init", "tiny", "--tokenizer", "bpe"))
    assert loaded.model.tokenizer.kind == "bpe"
    from tips.inference.loaded import variant_tokenizer

    assert variant_tokenizer("b14") == "bpe"  # the official variants carry no tokenizer of their own


def test_model_flag_loads_what_tips_load_reads(tmp_path):
    saved = tips.save(tips.create_model("tiny"), tmp_path / "ckpt")
    loaded = model_from_args(model_args("--model", str(saved)))
    reference = tips.load(saved)
    for k, v in reference.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert loaded.record == {"source": str(saved.resolve()), "text": None, "tokenizer": None}
    assert loaded.name == str(saved)


def test_model_and_random_init_are_exclusive():
    with pytest.raises(SystemExit):  # argparse: not allowed together
        model_args("--model", "x", "--random-init", "tiny")
    with pytest.raises(ModelArgumentError, match=re.escape(MODEL_CHOICE_ERROR)):
        model_from_args(model_args())


def test_every_command_says_the_same_without_a_model(tmp_path, capsys):
    runs = {
        "tips-extract": [str(tmp_path), "-o", str(tmp_path / "x")],
        "tips-predict": ["depth", str(tmp_path), "--random-head", "-o", str(tmp_path / "p")],
        "tips-probe": ["segmentation", "--dataset", f"scenes:{tmp_path}", "-o", str(tmp_path / "r")],
        "tips-serve": ["--random-head", "depth"],
    }
    for script, argv in runs.items():
        assert entry(script)(argv) == 1
        err = capsys.readouterr().err
        assert f"error: {MODEL_CHOICE_ERROR}" in err, (script, err)


# ----------------------------------------------------------------------------------------- one PCA colouring
def test_extract_and_probe_pictures_colour_the_same_features_alike(tmp_path, monkeypatch):
    """tips-extract's pca.png and the PCA column of a tips-probe picture show the same colours per patch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from tips_eval.probes.common import VisSample
    from tips_eval.report import save_picture

    g = torch.Generator().manual_seed(0)
    grids = [torch.randn(4, 4, 16, generator=g), torch.randn(4, 4, 16, generator=g) + 1.0]  # (h, w, D)
    images = [torch.rand(3, 32, 32, generator=g) for _ in grids]  # (3, H, W)

    picture = np.asarray(tips.pca_picture(images, grids))
    from tips.inference.pca import CAPTION_HEIGHT, PCA_SIDE
    from tips.inference.pictures import display_size

    side = display_size((32, 32), PCA_SIDE[1], PCA_SIDE[0])[0]  # small inputs are drawn upscaled
    cell_w = 2 * side + 8
    centres = (np.arange(4) + 0.5) * side / 4

    drawn = []
    real_imshow = Axes.imshow

    def spy(self, X, *args, **kwargs):
        if kwargs.get("interpolation") == "nearest":
            drawn.append(np.asarray(X))
        return real_imshow(self, X, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", spy)
    vis = [VisSample(f"im{i}", (im.permute(1, 2, 0).numpy() * 255).astype(np.uint8), np.zeros((32, 32), np.int64),
                     np.zeros((32, 32), np.int64), grid.numpy()) for i, (im, grid) in enumerate(zip(images, grids))]
    save_picture(vis, tmp_path / "probe.png", "segmentation", ["a"])
    assert len(drawn) == 2
    for i, probe_map in enumerate(drawn):
        ys = (CAPTION_HEIGHT + centres).astype(int)
        xs = (i * cell_w + side + centres).astype(int)
        extract_colours = picture[np.ix_(ys, xs)]  # (4, 4, 3) uint8, one pixel per patch
        np.testing.assert_array_equal(extract_colours, np.floor(probe_map * 255 + 0.5).astype(np.uint8))
    assert not np.allclose(drawn[0], drawn[0].mean())  # the colours vary: the test compares something


# ----------------------------------------------------------------------------------------- --config + key=value
def test_global_probe_config_file_then_flags_then_overrides(tmp_path, capsys):
    from tips_eval.options import parse_task_args
    from tips_eval.retrieval import build_parser

    config = tmp_path / "retrieval.yaml"
    config.write_text("data: probe/val\nrandom-init: tiny_p8\nbatch_size: 8\ncls: mean\nno_progress: true\n")
    args = parse_task_args(build_parser(), ["--config", str(config), "--batch-size", "4", "--cls", "alt", "cls=syn"])
    assert args.data == Path("probe/val")  # the file satisfies the required --data, with the flag's type
    assert args.random_init == "tiny_p8" and args.no_progress is True
    assert args.batch_size == 4  # a flag wins over the file
    assert args.cls == "syn"  # an override wins over the flag
    assert parse_task_args(build_parser(), ["--data", "d", "--random-init", "tiny", "resolution=56"]).resolution == 56
    for bad, message in ((["--config", str(config), "no_such_key=1"], "override no_such_key: no such option"),
                         (["--config", str(config), "cls=other"], "expected one of alt, syn, mean"),
                         (["--config", str(config), "batch_size=[1,"], "override 'batch_size=[1,' is not valid")):
        with pytest.raises(SystemExit):
            parse_task_args(build_parser(), bad)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the file does not make --data optional without it
        parse_task_args(build_parser(), ["--random-init", "tiny"])


def test_dense_probe_overrides_use_the_training_parser():
    from tips_eval.probes.config import load_probe_config

    cfg = load_probe_config(None, ["features.resolution=64", "optim.lr=3e-4"], task="depth")
    assert cfg.features.resolution == "64" and cfg.optim.lr == 3e-4
    with pytest.raises(ValueError, match=r"override 'optim.lr=\[1,' is not valid.*Accepted forms"):
        load_probe_config(None, ["optim.lr=[1,"], task="depth")
