"""Finite or stopped: no checkpoint or export with a non-finite tensor, a non-zero exit, and tips.load warns."""

import warnings
from pathlib import Path

import pytest
import torch
from test_trainer import TINY, write_shards
from test_trainer_options import make_trainer

import tips
from tips.cli.train import main as train_main
from tips.formats.pretrained import save_pretrained
from tips.train import checkpointing
from tips.train.builders import build_model
from tips.train.checkpointer import read_tensors
from tips.train.config import load_config
from tips.train.finite import NonFiniteWeightsError
from tips.train.plan import make_plan


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def exported_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def nan_checkpoint(shards, tmp_path_factory) -> Path:
    """A TINY save_pretrained folder whose one bias is NaN (a diverged run's export)."""
    cfg = load_config(None, [f"data.train={shards}", f"run.output_dir={tmp_path_factory.mktemp('unused')}", *TINY])
    model = build_model(cfg, make_plan(cfg))
    with torch.no_grad():
        model.vision.blocks[0].attn.qkv.bias[0] = float("nan")
    return save_pretrained(model, tmp_path_factory.mktemp("nan") / "export")


def test_weights_turning_nan_mid_run_stop_it_keeping_the_last_good_checkpoint(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.save_every=1", "run.keep_last=1", steps=4)
    step = trainer.optimizer.optimizer.step

    def poisoned_step(*args, **kwargs):  # what optim.lr=nan does on the first step: a finite loss, NaN weights
        out = step(*args, **kwargs)
        if trainer.step == 2:
            with torch.no_grad():
                next(trainer.core.parameters()).fill_(float("nan"))
        return out

    trainer.optimizer.optimizer.step = poisoned_step
    with pytest.raises(NonFiniteWeightsError, match=r"step \d+.*not finite.*step-00000002") as info:
        trainer.fit()
    assert "last good checkpoint" in str(info.value)
    saved = checkpointing.list_checkpoints(tmp_path)
    assert [p.name for p in saved] == ["step-00000002"]  # kept although keep_last=1 and the run went on
    assert all_finite(read_tensors(saved[0], "model.")) and all_finite(exported_tensors(saved[0] / "export"))
    assert not (tmp_path / "final").exists()


def test_lr_nan_exits_non_zero_and_writes_nothing(shards, tmp_path):
    code = train_main(["-o", str(tmp_path / "run"), f"data.train={shards}", "run.steps=2", "data.num_workers=0",
                       *TINY, "optim.lr=nan"])
    assert code != 0
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_init_from_a_checkpoint_with_a_nan_bias_exits_non_zero_without_an_export(shards, nan_checkpoint, tmp_path):
    code = train_main(["-o", str(tmp_path / "run"), f"data.train={shards}", "run.steps=2", "data.num_workers=0",
                       *TINY, f"model.init_from={nan_checkpoint}"])
    assert code != 0
    assert not (tmp_path / "run" / "final").exists()
    assert not checkpointing.list_checkpoints(tmp_path / "run")


def test_tips_load_warns_naming_the_non_finite_tensors(nan_checkpoint):
    with pytest.warns(UserWarning, match=r"vision\.blocks\.0\.attn\.qkv\.bias"):
        tips.load(nan_checkpoint)


def test_tips_load_of_finite_weights_does_not_warn(tmp_path):
    model = tips.TIPS(tips.get_variant("tiny"), tokenizer=None) if hasattr(tips, "get_variant") else None
    if model is None:
        pytest.skip("no get_variant in the public API")
    folder = save_pretrained(model, tmp_path / "ok")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tips.load(folder)
