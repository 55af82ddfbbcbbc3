"""Every numeric config value is range-checked when the config loads, before a model is built, with the key named."""

import pytest
import torch

from tips.train.config import load_config

BAD = [
    ("optim.clip_grad=-1", "optim.clip_grad"),  # torch clamps the clip coefficient only from above: ascent
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("loss.weights.mask=nan", "loss.weights.mask"),  # nan > 0 is False: the term would silently switch off
    ("teacher.momentum=nan", "teacher.momentum"),
    ("loss.student_temp=0", "loss.student_temp"),
    ("run.save_every=0", "run.save_every"),
    ("run.log_every=0", "run.log_every"),
    ("run.grad_accum=0", "run.grad_accum"),
    ("data.views.global_size=0", "data.views.global_size"),
    ("optim.warmup_frac=2", "optim.warmup_frac"),
    ("loss.teacher_temp=inf", "loss.teacher_temp"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
]


def _load(tmp_path, *overrides: str):
    return load_config(None, ["data.train=[shard-000000.tar]", f"run.output_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_a_value_outside_its_range_is_refused_when_the_config_loads_naming_the_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _load(tmp_path, override)


def test_fp16_without_cuda_is_refused_instead_of_silently_training_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"run\.mixed_precision=fp16"):
        _load(tmp_path, "run.mixed_precision=fp16")


def test_an_output_dir_with_a_too_long_name_is_refused_before_the_model_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"run\.output_dir"):
        load_config(None, ["data.train=[shard-000000.tar]", f"run.output_dir={tmp_path / ('x' * 300)}"])


def test_an_unwritable_output_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        import os
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(ValueError, match=r"run\.output_dir.*not writable"):
            load_config(None, ["data.train=[shard-000000.tar]", f"run.output_dir={locked / 'run'}"])
    finally:
        locked.chmod(0o700)


def test_the_defaults_and_off_switches_are_accepted(tmp_path):
    cfg = _load(tmp_path, "optim.clip_grad=0", "run.keep_last=0", "optim.warmup_frac=0", "optim.warmup_frac=1")
    assert cfg.optim.clip_grad == 0 and cfg.optim.warmup_frac == 1
    assert _load(tmp_path, "optim.clip_grad=null").optim.clip_grad is None
