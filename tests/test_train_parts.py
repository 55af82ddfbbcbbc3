"""Schedules, parameter groups, the EMA update and the config loader of the trainer."""

from pathlib import Path

import pytest
import torch
from torch import nn

from tips.io.recipes import RECIPES
from tips.train.config import load_config
from tips.train.optim import param_groups, set_lr_wd, build_optimizer
from tips.train.schedules import cosine, ema_momentum, fraction_to_steps, linear_warmup, warmup_cosine
from tips.train.teacher import ema_update, make_teacher


def test_warmup_cosine_hits_its_anchor_points():
    assert warmup_cosine(0, 100, 1.0, 0.0, 10) == 0.0
    assert warmup_cosine(5, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)
    assert cosine(0, 10, 0.04, 0.2) == pytest.approx(0.04) and cosine(10, 10, 0.04, 0.2) == 0.2


def test_ema_momentum_and_teacher_temperature_schedules():
    assert ema_momentum(0, 100, 0.994) == pytest.approx(0.994)
    assert ema_momentum(50, 100, 0.994) == pytest.approx(0.997)
    assert ema_momentum(100, 100, 0.994) == 1.0
    assert linear_warmup(0, 6, 0.04, 0.07) == 0.04
    assert linear_warmup(3, 6, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(6, 6, 0.04, 0.07) == 0.07
    assert fraction_to_steps(0.06, 10) == 1 and fraction_to_steps(0.0, 10) == 0


def test_ema_update_matches_hand_computation_and_never_needs_grad():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    before = teacher[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(3.0)
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher[0].weight, 0.9 * before + 0.1 * student[0].weight)
    assert torch.all(teacher[1].running_mean == 3.0)  # buffers are copied


def test_param_groups_exclude_norms_biases_tokens_and_scale_llrd():
    from tips import create_model

    model = nn.Module()
    model.model = create_model("tiny", **{"vision.depth": 2, "text.depth": 1})
    groups = param_groups(model, layerwise_decay=0.5, vision_prefix="model.vision.", vision_depth=2)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["model.vision.pos_embed"]["wd_mult"] == 0
    assert by_name["model.vision.blocks.0.norm1.weight"]["wd_mult"] == 0
    assert by_name["model.vision.blocks.0.attn.qkv.bias"]["wd_mult"] == 0
    assert by_name["model.logit_scale_alt"]["wd_mult"] == 0
    assert by_name["model.vision.blocks.0.attn.qkv.weight"]["wd_mult"] == 1
    assert by_name["model.vision.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.5**3)
    assert by_name["model.vision.blocks.1.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.5**1)
    assert by_name["model.text.token_embedding.weight"]["lr_mult"] == 1.0
    opt = build_optimizer(groups, "adamw", (0.9, 0.98), 1e-6)
    set_lr_wd(opt, 1e-3, 0.1, freeze_last_layer=False)
    g = next(g for g in opt.param_groups if g["lr_mult"] == pytest.approx(0.125))
    assert g["lr"] == pytest.approx(1.25e-4)


def test_config_loads_yaml_with_dotted_overrides_and_names_bad_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("run:\n  steps: 7\nloss:\n  weights:\n    mask: 0.0\n")
    cfg = load_config(path, ["data.train=shards/x-{000..003}.tar", "optim.betas=[0.9,0.95]"])
    assert cfg.run.steps == 7 and cfg.loss.weights.mask == 0.0
    assert cfg.data.train == ["shards/x-{000..003}.tar"] and cfg.optim.betas == (0.9, 0.95)
    with pytest.raises(Exception, match="nonsense"):
        load_config(path, ["data.train=a.tar", "loss.nonsense=1"])
    with pytest.raises(ValueError, match="teacher.mode"):
        load_config(path, ["data.train=a.tar", "teacher.mode=bogus"])
    with pytest.raises(ValueError, match="data.train"):
        load_config(path, [])


def test_shard_lists_in_brackets_keep_their_brace_patterns_and_bad_yaml_names_the_override():
    cfg = load_config(None, ["data.train=[a-{000..009}.tar, b-{0,1}.tar, 'c.tar']"])
    assert cfg.data.train == ["a-{000..009}.tar", "b-{0,1}.tar", "c.tar"]
    with pytest.raises(ValueError, match=r"override 'optim.betas=\[0.9,' is not valid.*Accepted forms"):
        load_config(None, ["data.train=a.tar", "optim.betas=[0.9,"])


def test_text_fields_stay_text_and_the_old_flat_data_keys_still_work():
    cfg = load_config(None, ["data.train=a.tar", "run.mixed_precision=no", "data.num_local=3",
                             "data.mask_ratio=[0.1,0.5]", "data.views.hflip_p=0.0"])
    assert cfg.run.mixed_precision == "no"  # YAML alone would read the boolean False
    assert cfg.data.views.num_local == 3 and cfg.data.mask.mask_ratio == (0.1, 0.5)
    assert cfg.data.views.hflip_p == 0.0  # every view / mask option is a config key now


def test_shipped_recipes_and_accelerate_configs_parse():
    from pathlib import Path

    import yaml

    root = RECIPES
    for recipe in sorted((root / "pretrain").glob("*.yaml")):
        cfg = load_config([recipe, root / "model" / "tips_tiny.yaml"], ["data.train=x.tar"])
        assert cfg.model.variant == "tiny", recipe
    from accelerate.commands.config.config_args import ClusterConfig

    for launch in sorted((root / "accelerate").glob("*.yaml")):
        parsed = ClusterConfig.from_yaml_file(str(launch))  # accelerate's own reader rejects unknown keys
        assert parsed.num_processes >= 1
        data = yaml.safe_load(launch.read_text())
        assert data["distributed_type"] in ("MULTI_GPU", "FSDP", "MULTI_CPU"), launch
        assert data["num_processes"] >= data["num_machines"] >= 1
        if data["distributed_type"] == "FSDP":
            assert data["fsdp_config"]["fsdp_use_orig_params"] is True  # EMA reads parameters by name
    assert len(list((root / "accelerate").glob("*.yaml"))) >= 2


def test_the_parallel_strategy_is_chosen_in_one_place():
    import re

    import tips.train

    pattern = re.compile(r'self\.sharded|parallel ?== ?"fsdp"')
    root = Path(tips.train.__file__).parent
    found = [f"{p.name}:{i}" for p in sorted(root.glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(found) == 1 and found[0].startswith("parallel.py:"), found


def test_text_tower_layerwise_decay_follows_the_dinov2_rule_over_its_blocks():
    """λ^(L+1−l) over a 2-block text tower, λ = 0.5: table computed by hand."""
    from tips import create_model

    model = nn.Module()
    model.model = create_model("tiny", **{"vision.depth": 1, "text.depth": 2})
    groups = param_groups(model, 0.5, "model.vision.", 1, 0.5, "model.text.", 2, tower_prefix="model.")
    lr = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
    expected = {  # layer l: embedding 0, block i → i + 1, final norm 3; multiplier 0.5 ** (3 − l)
        "model.text.token_embedding.weight": 0.125,
        "model.text.transformer.resblocks.0.attn.in_proj_weight": 0.25,
        "model.text.transformer.resblocks.0.mlp.c_fc.weight": 0.25,
        "model.text.transformer.resblocks.1.attn.in_proj_weight": 0.5,
        "model.text.transformer.resblocks.1.ln_2.bias": 0.5,
        "model.text.ln_final.weight": 1.0,
        "model.logit_scale_alt": 1.0,
    }
    for name, mult in expected.items():
        assert lr[name] == mult, (name, lr[name], mult)
    assert lr["model.vision.patch_embed.proj.weight"] == 0.25  # image tower: depth 1, 0.5 ** 2
    assert all(g["is_tower"] for g in groups)  # everything under the tower prefix


def test_head_warmup_zeroes_the_towers_lr_then_ramps_and_leaves_heads_alone():
    from tips import create_model
    from tips.train.warmup import tower_lr_factor

    assert [tower_lr_factor(s, 3, 2) for s in range(7)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert tower_lr_factor(0, 0, 0) == 1.0
    model = nn.Module()
    model.model = create_model("tiny", **{"vision.depth": 1, "text.depth": 1})
    model.head = nn.Linear(4, 4)
    groups = param_groups(model, tower_prefix="model.")
    opt = build_optimizer(groups, "adamw", (0.9, 0.98), 1e-6)
    set_lr_wd(opt, 1e-3, 0.1, freeze_last_layer=False, tower_lr_factor=0.0)
    lrs = {n: o["lr"] for g, o in zip(groups, opt.param_groups) for n in g["param_names"]}
    assert lrs["head.weight"] == 1e-3 and lrs["model.vision.pos_embed"] == 0.0
