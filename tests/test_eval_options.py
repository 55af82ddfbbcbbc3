"""One option mechanism for every tips-probe subcommand (issue 41 item 13): a dataclass schema whose choices OmegaConf
checks, merged as defaults < --config < flags < key=value by tips_eval.options.merge_options, which the dense probes'
load_probe_config uses too."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from tips_eval import cli
from tips_eval.options import OptionError, TaskParser, choices, merge_options, parse_task_args
from tips_eval.probes.config import ProbeConfig, load_probe_config

GLOBAL = {name: importlib.import_module(module) for name, module in cli.FORWARDED.items()}


def _error(capsys, parser, argv) -> str:
    with pytest.raises(SystemExit) as e:
        parse_task_args(parser, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


@pytest.mark.parametrize("name", sorted(GLOBAL))
def test_every_global_task_parses_through_its_schema(name):
    parser = GLOBAL[name].build_parser()
    assert isinstance(parser, TaskParser) and dataclasses.is_dataclass(parser.schema)
    fields = {f.name: f for f in dataclasses.fields(parser.schema)}
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest in fields}
    assert set(flags) == set(fields), set(fields) ^ set(flags)  # every option is a flag and a schema key
    for dest, action in flags.items():
        assert not action.required, dest  # the schema decides what is required (a flag, the file or key=value)
        f = fields[dest]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        shown = action.default
        if default != "???" and shown is not None and not isinstance(shown, bool):
            assert type(default)(shown) == default, (name, dest, shown, default)  # --help shows the real default
        if action.choices is not None:
            assert set(map(str, action.choices)) == set(choices(parser.schema, dest)), dest


def test_a_bad_choice_in_the_config_file_and_as_override_names_the_key_and_the_choices(tmp_path, capsys):
    parser = GLOBAL["knn"].build_parser
    config = tmp_path / "knn.yaml"
    config.write_text("train: a\nval: b\nrandom-init: tiny\ncls: softmax\n")
    err = _error(capsys, parser(), ["--config", str(config)])
    assert f"--config {config}: cls='softmax': expected one of alt, syn, mean" in err
    err = _error(capsys, parser(), ["--train", "a", "--val", "b", "--random-init", "tiny", "dtype=fp8"])
    assert "override dtype='fp8': expected one of float32, bfloat16, float16" in err
    err = _error(capsys, GLOBAL["zero-shot-seg"].build_parser(), ["--data", "d", "--random-init", "tiny", "mode=tiles"])
    assert "mode='tiles': expected one of whole, slide" in err


def test_a_required_option_can_come_from_the_file_and_is_named_when_missing(tmp_path, capsys):
    parser = GLOBAL["knn"].build_parser
    config = tmp_path / "knn.yaml"
    config.write_text("train: imgs/train\nrandom_init: tiny\nk: 5\n")
    args = parse_task_args(parser(), ["--config", str(config), "--val", "imgs/val", "--k", "7", "temperature=0.1"])
    assert args.train == Path("imgs/train") and args.val == Path("imgs/val")  # the schema's type, from the file
    assert (args.k, args.temperature, args.random_init) == (7, 0.1, "tiny")  # flag > file, override > default
    assert args.batch_size == 64 and args.cls == "alt" and args.device == "auto"  # the schema's defaults
    err = _error(capsys, parser(), ["--config", str(config)])
    assert "val is required: give --val, a val: line in --config, or val=VALUE" in err
    retention = GLOBAL["retention"].build_parser
    config.write_text("before: a\nafter: b\ndataset: scenes:x\nout: results\niterations: 5\n")
    args = parse_task_args(retention(), ["--config", str(config), "--resolution", "56"])
    assert (args.before, args.iterations, args.resolution, args.out) == ("a", 5, 56, "results")


def test_a_flag_given_at_its_default_still_wins_over_the_file(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("data: d\nrandom_init: tiny\nbatch_size: 8\nno_progress: true\n")
    args = parse_task_args(GLOBAL["retrieval"].build_parser(), ["--config", str(config), "--batch-size", "64"])
    assert args.batch_size == 64 and args.no_progress is True


def test_dense_probes_merge_through_the_same_function_with_choices_checked(tmp_path):
    config = tmp_path / "depth.yaml"
    config.write_text("depth:\n  spacing: cubic\n")
    with pytest.raises(OptionError, match=rf"--config {config}: depth.spacing='cubic': expected one of uniform, log"):
        load_probe_config(config, [], task="depth")
    with pytest.raises(OptionError, match=r"override normals.loss='l2': expected one of angular, uncertainty"):
        load_probe_config(None, ["normals.loss=l2"], task="normals")
    with pytest.raises(OptionError, match=r"flag protocol='slow': expected one of fast, dinov2"):
        load_probe_config(None, [], task="depth", protocol="slow")
    # the preset sits under the file: the file's lr wins, the preset's iteration count stays
    config.write_text("optim:\n  lr: 0.5\n")
    cfg = load_probe_config(config, [], task="segmentation", protocol="dinov2")
    assert cfg.optim.lr == 0.5 and cfg.optim.iterations == 40000
    direct = merge_options(ProbeConfig, config, {"task": "depth"}, ["optim.warmup=3"])
    assert (direct.task, direct.optim.lr, direct.optim.warmup) == ("depth", 0.5, 3)


def test_the_literal_choices_match_the_library_tables():
    from tips.inference.open_vocab import MODES
    from tips.inference.quantize import MODES as QUANTIZE
    from tips.models.dtypes import DTYPES
    from tips_eval import common

    assert set(typing.get_args(common.Dtype)) == set(DTYPES)
    assert set(typing.get_args(common.Quantize)) == set(QUANTIZE)
    assert set(choices(GLOBAL["zero-shot-seg"].ZeroShotSegOptions, "mode")) == set(MODES)
    assert set(typing.get_args(common.Cls)) == set(common.CLS_CHOICES)
