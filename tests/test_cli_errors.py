"""One error style and one spelling per idea across the console scripts: a mistake is answered in at most three
lines on stderr with exit 2 (usage) or 1 (failure), before any model is built; tracebacks only with --debug or
TIPS_DEBUG=1; every --help spells an idea one way and prints no RST markup."""

import argparse
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tips.cli.errors import CliParser, run_main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
OFFICIAL = "tips-v2-b14"


def entry(script: str):
    module, _, name = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and an empty cache: an official name cannot be loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TIPS_OFFLINE", "1")
    monkeypatch.setenv("TIPS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("TIPS_DEBUG", raising=False)
    return tmp_path


def call(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run a console script's main in-process → (exit status, stderr)."""
    try:
        code = entry(script)(argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


# (script, argv with {tmp} for the test folder, expected exit status, a word the message must contain)
CASES = [
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--bogus"], 2, "--bogus"),
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--random-init", "tiny", "--batch-size", "many"], 2, "--batch-size"),
    ("tips-extract", ["{tmp}/nope", "-o", "{tmp}/o", "--random-init", "tiny"], 1, "nope"),
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--model", OFFICIAL], 1, "offline"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--bogus"], 2, "--bogus"),
    ("tips-predict", ["deepth", "{tmp}", "-o", "{tmp}/o"], 2, "deepth"),
    ("tips-predict", ["depth", "{tmp}/nope", "-o", "{tmp}/o", "--random-init", "tiny", "--random-head"], 1, "nope"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--model", OFFICIAL, "--random-head"], 1, "offline"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--tile", "0"], 2, "--tile"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--tile", "448", "--overlap", "0.5"], 2, "--overlap"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--tile", "448", "--overlap", "-0.1"], 2, "--overlap"),
    ("tips-predict", ["depth", "{tmp}", "-o", "{tmp}/o", "--upsample", "bicubic"], 2, "--upsample"),
    ("tips-predict", ["open-vocab", "{tmp}", "-o", "{tmp}/o", "--random-init", "tiny", "--classes", "a, b",
                      "--upsample", "jbu"], 1, "--upsample"),
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--patch-tokens", "--tile", "-14"], 2, "--tile"),
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--patch-tokens", "--tile", "448", "--overlap", "nan"], 2, "--overlap"),
    ("tips-extract", ["{tmp}", "-o", "{tmp}/o", "--upsample", "jbu", "--upsample-factor", "0.5"], 2,
     "--upsample-factor"),
    ("tips-export", ["--model", "x", "--format", "official", "-o", "{tmp}/o", "--bogus"], 2, "--bogus"),
    ("tips-export", ["--model", "x", "--format", "nope", "-o", "{tmp}/o"], 2, "nope"),
    ("tips-export", ["--model", "{tmp}/nope", "--format", "official", "-o", "{tmp}/o"], 1, "nope"),
    ("tips-export", ["--model", OFFICIAL, "--format", "official", "-o", "{tmp}/o"], 1, "offline"),
    ("tips-merge", ["a", "b", "-o", "{tmp}/o", "--bogus"], 2, "--bogus"),
    ("tips-merge", ["a", "b", "-o", "{tmp}/o", "--weights", "1", "x"], 2, "--weights"),
    ("tips-merge", ["{tmp}/nope", "{tmp}/nope2", "-o", "{tmp}/o"], 1, "nope"),
    ("tips-merge", [OFFICIAL, OFFICIAL, "-o", "{tmp}/o"], 1, "offline"),
    ("tips-train", ["--config", "pretrain/demo_cpu", "--bogus"], 2, "--bogus"),
    ("tips-train", ["--config", "pretrain/demo_cpu", "run.steps=many"], 2, "run.steps=many"),
    ("tips-train", ["--config", "{tmp}/nope.yaml"], 2, "nope.yaml"),
    ("tips-probe", ["segmentaton"], 2, "segmentaton"),
    ("tips-probe", ["depth", "--dataset", "scenes:{tmp}", "--bogus"], 2, "--bogus"),
    ("tips-probe", ["depth", "--random-init", "tiny", "--dataset", "scenes:{tmp}", "--head", "lin9"], 2, "lin9"),
    ("tips-probe", ["depth", "--random-init", "tiny", "--dataset", "scenes:{tmp}/nope"], 1, "nope"),
    ("tips-probe", ["depth", "--model", OFFICIAL, "--dataset", "scenes:{tmp}"], 1, "offline"),
    ("tips-probe", ["retrieval", "--data", "{tmp}", "--bogus"], 2, "--bogus"),
    ("tips-probe", ["compare", "{tmp}/nope"], 1, "nope"),
    ("tips-probe", ["compare", "{tmp}", "--format", "html"], 2, "html"),
    ("tips-probe", ["depth", "--random-init", "tiny", "--dataset", "scenes:{tmp}", "depth.spacing=cubic"], 2,
     "depth.spacing='cubic': expected one of uniform, log"),
    ("tips-probe", ["knn", "--train", "{tmp}", "--val", "{tmp}", "--random-init", "tiny", "cls=x"], 2,
     "cls='x': expected one of alt, syn, mean"),
    ("tips-probe", ["retrieval", "--random-init", "tiny", "--data", "{tmp}/nope.jsonl"], 1, "nope"),
    ("tips-demo", ["--bogus"], 2, "--bogus"),
    ("tips-demo", ["--steps", "many"], 2, "--steps"),
    ("tips-shards", ["-o", "{tmp}/o", "--from-shards", "x", "--bogus"], 2, "--bogus"),
    ("tips-shards", ["-o", "{tmp}/o", "--from-shards", "x", "--max-size", "huge"], 2, "--max-size"),
    ("tips-shards", ["-o", "{tmp}/o", "--from-shards", "{tmp}/nope"], 1, "nope"),
    ("tips-caption", ["{tmp}", "-o", "{tmp}/o", "--captioner", "c", "--bogus"], 2, "--bogus"),
    ("tips-caption", ["{tmp}", "-o", "{tmp}/o", "--captioner", "c", "--batch-size", "many"], 2, "--batch-size"),
    ("tips-caption", ["{tmp}/nope", "-o", "{tmp}/o", "--captioner", "c"], 1, "nope"),
    ("tips-scenes", ["-o", "{tmp}/o", "--bogus"], 2, "--bogus"),
    ("tips-scenes", ["-o", "{tmp}/o", "--resolution", "3"], 2, "--resolution"),
    ("tips-download", [OFFICIAL, "--bogus"], 2, "--bogus"),
    ("tips-download", ["tips-v9-b14"], 2, "tips-v9-b14"),
    ("tips-download", [OFFICIAL, "-o", "{tmp}/cache"], 1, "offline"),
    ("tips-index", ["{tmp}", "-o", "{tmp}/i", "--bogus"], 2, "--bogus"),
    ("tips-index", ["{tmp}", "-o", "{tmp}/i", "--kind", "patch"], 2, "--kind"),
    ("tips-index", ["{tmp}/nope", "-o", "{tmp}/i"], 1, "nope"),
    ("tips-search", ["--index", "{tmp}", "--query", "a cat", "--bogus"], 2, "--bogus"),
    ("tips-search", ["--index", "{tmp}", "--query", "a cat", "-k", "0"], 2, "-k"),
    ("tips-search", ["--index", "{tmp}/nope", "--query", "a cat", "--random-init", "tiny"], 1, "nope"),
    ("tips-serve", ["--random-init", "tiny", "--bogus"], 2, "--bogus"),
    ("tips-serve", ["--random-init", "tiny", "--port", "70000"], 2, "--port"),
    ("tips-serve", ["--random-init", "tiny", "--max-batch", "0"], 2, "--max-batch"),
    ("tips-serve", ["--random-init", "tiny", "--random-head", "depht"], 2, "depht"),
    ("tips-serve", ["--random-init", "tiny", "--index", "{tmp}/nope"], 1, "nope"),
    ("tips-serve", ["--model", OFFICIAL], 1, "offline"),
]


def test_every_console_script_has_error_cases():
    assert {case[0] for case in CASES} == set(SCRIPTS)


@pytest.mark.parametrize("script,argv,code,word", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_mistake_is_answered_in_at_most_three_lines(script, argv, code, word, offline, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes are named relative to the repository
    got, err = call(script, [a.replace("{tmp}", str(offline)) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert got == code, err
    assert 1 <= len(lines) <= 3 and "Traceback" not in err, err
    assert word in err and "error" in lines[-1], err


def test_a_traceback_only_with_debug_or_tips_debug(offline, capsys, monkeypatch):
    argv = ["--model", str(offline / "nope"), "--format", "official", "-o", str(offline / "o")]
    with pytest.raises(FileNotFoundError):
        entry("tips-export")([*argv, "--debug"])
    monkeypatch.setenv("TIPS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        entry("tips-export")(argv)
    monkeypatch.setenv("TIPS_DEBUG", "0")
    assert entry("tips-export")(argv) == 1


def test_an_unexpected_error_names_its_type_and_how_to_see_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("TIPS_DEBUG", raising=False)

    def body() -> int:
        raise ZeroDivisionError("division by zero")

    assert run_main("tips-x", body) == 1
    assert capsys.readouterr().err == "tips-x: error: ZeroDivisionError: division by zero (rerun with --debug for the traceback)\n"


def test_usage_errors_are_one_line_not_the_usage_block(capsys):
    parser = CliParser(prog="tips-x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--n", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "tips-x: error: argument --n: invalid int value: 'x' (tips-x --help lists the options)\n"


@pytest.mark.slow  # ten Python processes that import torch: about 12 s of CPU on an idle 2-core machine
def test_every_console_script_exits_with_its_status_in_a_real_process(tmp_path):
    """One real process per script (all at once): the exit status and stderr of a missing file or a bad flag."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TIPS_OFFLINE": "1", "TIPS_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TIPS_DEBUG", None)
    first = {}
    for script, argv, code, _ in CASES:
        if script not in first or (code == 1 and first[script][1] == 2):
            first[script] = ([a.replace("{tmp}", str(tmp_path)) for a in argv], code)
    procs = {}
    for script, (argv, code) in first.items():
        module, _, name = SCRIPTS[script].partition(":")
        program = f"import sys; from {module} import {name}; sys.exit({name}(sys.argv[1:]))"
        procs[script] = subprocess.Popen([sys.executable, "-c", program, *argv], cwd=ROOT, env=env, text=True,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for script, proc in procs.items():
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == first[script][1], (script, err)
        assert 1 <= len(err.strip().splitlines()) <= 3 and "Traceback" not in err, (script, err)


# ------------------------------------------------------------------------------------------- one spelling per idea
def every_parser() -> dict[str, argparse.ArgumentParser]:
    """Every parser a user meets: each console script's and each tips-probe subcommand's."""
    from tips_eval import cli

    parsers = {}
    for script, target in SCRIPTS.items():
        module = importlib.import_module(target.partition(":")[0])
        module = importlib.import_module(f"{module.__name__}.cli") if script == "tips-scenes" else module
        parsers[script] = cli.top_parser() if script == "tips-probe" else module.build_parser()
    for task in cli.DENSE:
        parsers[f"tips-probe {task}"] = cli.dense_parser(task)
    for task, module in cli.FORWARDED.items():
        parsers[f"tips-probe {task}"] = importlib.import_module(module).build_parser()
    return parsers


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_every_help_spells_each_idea_one_way():
    for name, parser in every_parser().items():
        text, flags = parser.format_help(), options(parser)
        assert isinstance(parser, CliParser), f"{name}: errors are not one line"
        assert "``" not in text, f"{name} --help prints RST markup"
        assert "forwards to" not in text, name
        for old in ("--workers", "--size", "--image-size", "--overwrite", "--image-side"):
            assert old not in flags, f"{name} still shows {old}"
        if "--device" in flags:
            assert flags["--device"].default == "auto", f"{name} --device default {flags['--device'].default!r}"
    parsers = every_parser()
    for name in ("tips-extract", "tips-predict", "tips-scenes", "tips-probe depth", "tips-probe retrieval"):
        assert "--num-workers" in options(parsers[name]), name
    for name in ("tips-extract", "tips-predict", "tips-export", "tips-scenes", "tips-probe depth", "tips-probe knn"):
        assert "--resolution" in options(parsers[name]), name
    assert "--force" in options(parsers["tips-shards"]) and "--force" in options(parsers["tips-scenes"])
    assert "--captioner" in options(parsers["tips-caption"]) and "--model" not in options(parsers["tips-caption"])
    export = options(parsers["tips-export"])
    assert "--model" in export and export["--format"].required
    assert not [a for a in parsers["tips-export"]._actions if not a.option_strings and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("script,argv,new", [
    ("tips-scenes", ["-o", "x", "--workers", "2"], "--num-workers"),
    ("tips-scenes", ["-o", "x", "--size", "64"], "--resolution"),
    ("tips-shards", ["-o", "x", "--from-shards", "s", "--overwrite"], "--force"),
    ("tips-caption", ["s", "-o", "x", "--model", "m"], "--captioner"),
    ("tips-export", ["--model", "m", "--format", "onnx", "-o", "x", "--image-size", "224"], "--resolution"),
    ("tips-export", ["m", "--format", "official", "-o", "x"], "--model m"),
    ("tips-probe", ["depth", "--dataset", "scenes:x", "--workers", "0"], "--num-workers"),
    ("tips-probe", ["knn", "--train", "a", "--val", "b", "--workers", "0"], "--num-workers"),
])
def test_an_old_spelling_is_refused_naming_the_new_one(script, argv, new, capsys):
    code, err = call(script, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and new in err, err


def test_tips_probe_refuses_a_resolution_off_the_patch_grid_naming_the_nearest():
    from tips_eval.features import parse_resolution

    assert parse_resolution("70", 14) == (70, 70) and parse_resolution("56x112", 14) == (56, 112)
    with pytest.raises(ValueError, match=re.escape("resolution 64 is not a multiple of the patch size 14; nearest valid: 56 or 70")):
        parse_resolution("64", 14)


def test_device_auto_is_decided_when_the_command_runs(monkeypatch):
    import torch

    from tips.inference.loaded import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device cuda: no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


# ------------------------------------------------------------------------------------- training overrides
@pytest.mark.parametrize("override,named", [
    ("run.steps=many", "run.steps"),
    ("optim.lr=[1, 2]", "optim.lr"),
    ("loss.contrastive=hinge", "loss.contrastive"),
])
def test_a_bad_override_value_names_the_override_and_the_accepted_forms(override, named):
    """docs/training.md: 'A bad value names the override and lists the accepted forms'."""
    from tips.train.config import load_config

    with pytest.raises(ValueError) as e:
        load_config("pretrain/demo_cpu", [override])
    message = str(e.value)
    assert "\n" not in message and named in message
    assert "Accepted forms" in message or "expected one of" in message, message


def test_a_misspelt_override_key_lists_the_keys_of_its_section():
    from tips.train.config import load_config

    with pytest.raises(ValueError, match=r"no key loss\.contrastiv \(the keys of loss: .*contrastive,") as e:
        load_config("pretrain/demo_cpu", ["loss.contrastiv=softmax"])
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ noise
def test_export_filters_exactly_the_known_notices():
    import logging

    from tips.formats.noise import known_noise_filtered

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    seen: list[str] = []
    pytree, root = logging.getLogger("torch.utils._pytree"), logging.getLogger()
    handlers = {pytree: Keep(), root: Keep()}
    for logger, handler in handlers.items():
        logger.addHandler(handler)
    try:
        with known_noise_filtered():
            pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type.", "E")
            root.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
            pytree.warning("a pytree warning nobody has seen before")
            root.warning("an onnxruntime warning nobody has seen before")
        inside = list(seen)
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile", "E")  # outside: shown
    finally:
        for logger, handler in handlers.items():
            logger.removeHandler(handler)
    assert "a pytree warning nobody has seen before" in inside and "an onnxruntime warning nobody has seen before" in inside
    assert not any("pre-processing" in m or "Enum subclass" in m for m in inside)
    assert any("Enum subclass" in m for m in seen[len(inside):])


def test_config_choices_are_enums_that_omegaconf_checks_with_the_key_named(tmp_path):
    from tips.train.choices import Contrastive, MixedPrecision
    from tips.train.config import load_config

    base, recipe = "pretrain/demo_cpu", tmp_path / "r.yaml"
    recipe.write_text("loss:\n  contrastive: sigmoid\n")
    cfg = load_config([base, recipe], ["run.mixed_precision=no"])
    assert cfg.loss.contrastive is Contrastive.sigmoid and cfg.loss.contrastive == "sigmoid"
    assert cfg.run.mixed_precision is MixedPrecision.no and f"{cfg.run.mixed_precision}" == "no"
    recipe.write_text("loss:\n  contrastive: hinge\n")
    with pytest.raises(ValueError, match=r"r\.yaml: loss\.contrastive: Invalid value 'hinge', expected one of \[softmax, sigmoid\]"):
        load_config([base, recipe])


def test_our_warnings_print_as_one_line_and_others_as_python_prints_them(capsys):
    import warnings

    from tips.inference.slow_paths import SlowPathWarning

    def body():
        warnings.warn("bfloat16 on this CPU runs at about 0.14x float32; use --dtype float32", SlowPathWarning)
        warnings.warn("a third-party notice", FutureWarning)
        return 0

    passed_on = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest: passed_on.append((str(message), category))
        assert run_main("tips-x", body) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["tips-x: warning: bfloat16 on this CPU runs at about 0.14x float32; use --dtype float32"]
    assert passed_on == [("a third-party notice", FutureWarning)]  # left to whoever showed warnings before
