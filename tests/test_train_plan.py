"""The run plan: every accepted combination of loss terms × MIM target × teacher trains and logs exactly its
terms; rejected ones fail at config time naming the keys; a steady-state step syncs the host at most once and,
compiled, does not recompile."""

import itertools
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from test_trainer import TINY, write_shards

import tips
from tips.train.config import load_config
from tips.train.plan import TERMS, PlanError, make_plan
from tips.train.trainer import Trainer

ON = {"contrastive_alt": 0.5, "contrastive_syn": 0.5, "distill": 1.0, "mask": 2.0, "spread": 0.1}
TEACHERS = ("ema", "head_only_ema", "frozen_heads", "frozen_features")


def weights_overrides(on: tuple[bool, ...]) -> list[str]:
    spread = ["loss.spread=koleo"] if on[4] else []
    return [f"loss.weights.{t}={ON[t] if flag else 0}" for t, flag in zip(TERMS, on)] + spread


def uses_teacher(on: tuple[bool, ...], mim_target: str) -> bool:
    distill, mask = on[2], on[3]
    return distill or (mask and mim_target == "features")


ALL = [(on, mim, teacher) for on in itertools.product([False, True], repeat=len(TERMS))
       for mim in ("features", "pixels") for teacher in TEACHERS]
# The plan rejects: no term at all, a frozen teacher that no term would use, and a spread-out term without
# contrastive embeddings to spread.
ACCEPTED = [c for c in ALL if any(c[0]) and (not c[2].startswith("frozen") or uses_teacher(c[0], c[1]))
            and (not c[0][4] or c[0][0] or c[0][1])]


def pairwise(cases: list[tuple]) -> list[tuple]:
    """A small subset of ``cases`` in which every value pair of any two factors that occurs in ``cases`` occurs
    (factors: the weights, the MIM target, the teacher)."""
    flat = [(*on, mim, teacher) for on, mim, teacher in cases]
    n = len(TERMS)
    pairs = lambda row: {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}  # noqa: E731
    needed = set().union(*(pairs(r) for r in flat))
    chosen = []
    while needed:
        best = max(flat, key=lambda r: len(pairs(r) & needed))
        chosen.append(best)
        needed -= pairs(best)
    return [(tuple(r[:n]), r[n], r[n + 1]) for r in chosen]


PAIRWISE = pairwise(ACCEPTED)


def case_id(case) -> str:
    on, mim, teacher = case
    terms = "+".join(t.split("_")[-1] for t, flag in zip(TERMS, on) if flag)
    return f"{terms}-{mim}-{teacher}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def overrides(shards: str, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [f"data.train={shards}", f"run.output_dir={out}", f"run.steps={steps}", "run.save_every=1000",
            "data.num_workers=0", *TINY, *extra]


@pytest.fixture(scope="module")
def teachers(shards, tmp_path_factory) -> dict[str, str]:
    """Frozen-teacher checkpoints: our export with its DINO/iBOT heads, and the official layout (no heads)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    root = tmp_path_factory.mktemp("teachers")
    final = Trainer(load_config(None, overrides(shards, root / "run", steps=1))).fit()
    paths = tips.save(tips.load(final), root / "official", format="official", name="t")
    return {"frozen_heads": str(final), "frozen_features": str(paths["vision"])}


def case_overrides(case, teachers) -> list[str]:
    on, mim, teacher = case
    extra = weights_overrides(on) + [f"loss.mim_target={mim}"]
    if teacher.startswith("frozen"):
        extra += ["teacher.mode=frozen", f"teacher.checkpoint={teachers[teacher]}"]
    else:
        extra.append(f"teacher.mode={teacher}")
    return extra


def train_and_log(shards, out, extra) -> tuple[Trainer, list[dict[str, float]]]:
    trainer = Trainer(load_config(None, overrides(shards, out, *extra)))
    logged = []
    original = trainer.accelerator.log
    trainer.accelerator.log = lambda values, step=None, **kw: (logged.append(dict(values)), original(values, step, **kw))
    trainer.fit()
    return trainer, logged


def check_case(case, shards, teachers, tmp_path) -> None:
    on, mim, teacher = case
    trainer, logged = train_and_log(shards, tmp_path, case_overrides(case, teachers))
    plan = trainer.plan
    assert plan.terms == tuple(t for t, flag in zip(TERMS, on) if flag)
    expected_teacher = teacher if uses_teacher(on, mim) else "none"
    assert plan.teacher == expected_teacher
    assert len(logged) == 2 and trainer.step == 2 and trainer.nonfinite_total == 0
    for values in logged:
        terms = {k[len("loss/"):] for k in values if k.startswith("loss/")}
        assert terms == set(plan.terms) | {"loss"}, (terms, plan)
        assert all(torch.isfinite(torch.tensor(values[f"loss/{t}"])) for t in terms)
        stats = {k.split("/")[1].rsplit("_", 1)[0] for k in values if k.startswith("teacher/")}
        assert stats == set(plan.teacher_stats)


@pytest.mark.parametrize("case", PAIRWISE, ids=case_id)
def test_each_accepted_combination_trains_and_logs_exactly_its_terms(case, shards, teachers, tmp_path):
    check_case(case, shards, teachers, tmp_path)


@pytest.mark.slow  # the full product: every accepted combination, about 2 s each
@pytest.mark.parametrize("case", [c for c in ACCEPTED if c not in PAIRWISE], ids=case_id)
def test_every_accepted_combination_trains_and_logs_exactly_its_terms(case, shards, teachers, tmp_path):
    check_case(case, shards, teachers, tmp_path)


def test_the_pairwise_set_switches_every_weight_on_and_off_under_every_teacher():
    for i in range(len(TERMS)):
        assert {(c[0][i], c[2]) for c in PAIRWISE} == {(c[0][i], c[2]) for c in ACCEPTED}
    assert {(c[1], c[2]) for c in PAIRWISE} == {(c[1], c[2]) for c in ACCEPTED}
    assert len(PAIRWISE) < len(ACCEPTED) / 4


def test_self_distillation_off_with_masked_modelling_on_trains(shards, tmp_path):
    """The paper's "TIPS without self-distillation" ablation: an iBOT-only EMA teacher, no DINO head."""
    trainer, logged = train_and_log(shards, tmp_path, ["loss.weights.distill=0"])
    assert trainer.plan.distill == "none" and trainer.plan.mask == "ibot"
    assert trainer.core.student.dino_head is None and trainer.teacher.dino_head is None
    assert trainer.teacher.ibot_head is not None and "loss/mask" in logged[-1] and "loss/distill" not in logged[-1]


@pytest.mark.parametrize("extra, keys", [
    (weights_overrides((False,) * 5), ["loss.weights.contrastive_alt", "loss.weights.mask"]),
    (["loss.weights.distill=0", "loss.weights.mask=0", "teacher.mode=frozen", "teacher.checkpoint=t.npz"],
     ["teacher.mode=frozen", "loss.weights.distill"]),
    (["data.views.num_local=0"], ["loss.weights.distill", "data.views.num_local"]),
    (["data.mask.mask_ratio=0.0"], ["loss.weights.mask", "data.mask.mask_ratio"]),
    (["loss.mim_target=pixels", "data.mask.mask_ratio=0.0", "loss.ibot_plus_plus=true"], ["data.mask.mask_ratio"]),
    (["loss.weights.mask=0", "loss.contrastive_view=masked"], ["loss.contrastive_view", "loss.weights.mask"]),
    (["loss.weights.distill=-1"], ["loss.weights.distill=-1.0"]),
    (["loss.weights.spread=0.1"], ["loss.weights.spread", "loss.spread"]),
    (["loss.spread=gor"], ["loss.spread=gor", "loss.weights.spread=0"]),
    (["loss.spread=gor", "loss.weights.spread=0.1", "loss.weights.contrastive_alt=0", "loss.weights.contrastive_syn=0"],
     ["loss.weights.spread", "loss.weights.contrastive_alt"]),
    (["loss.matryoshka_dims=[32,32]"], ["loss.matryoshka_dims"]),
    (["loss.matryoshka_dims=[32,16]", "loss.matryoshka_weights=[1.0]"], ["loss.matryoshka_weights"]),
], ids=["nothing_on", "unused_frozen_teacher", "no_local_crops", "nothing_masked", "pixels_nothing_masked",
        "masked_view_missing", "negative_weight", "spread_without_regulariser", "regulariser_without_weight",
        "spread_without_contrastive", "matryoshka_repeated_width", "matryoshka_weights_mismatch"])
def test_combinations_that_cannot_train_fail_at_config_time_naming_the_keys(extra, keys):
    with pytest.raises(PlanError) as info:
        load_config(None, ["data.train=x.tar", *extra])
    for key in keys:
        assert key in str(info.value)


def test_matryoshka_widths_and_the_spread_term_train_and_appear_in_the_logs(shards, tmp_path):
    trainer, logged = train_and_log(shards, tmp_path, ["loss.matryoshka_dims=[64,32,16]", "loss.spread=gor",
                                                       "loss.weights.spread=0.1", "loss.spread_on=[image]"])
    last = logged[-1]
    assert {f"matryoshka/{t}@{d}" for t in ("alt", "syn") for d in (64, 32, 16)} <= set(last)
    assert {"spread/cls_alt_gor_mean_cos", "spread/cls_syn_gor_second_moment", "loss/spread"} <= set(last)
    assert not any(k.startswith("spread/text") for k in last)  # spread_on=[image]
    with pytest.raises(ValueError, match="loss.matryoshka_dims=\\[128\\] exceed the embedding width 64"):
        Trainer(load_config(None, overrides(shards, tmp_path / "wide", "loss.matryoshka_dims=[128]")))


def test_a_frozen_checkpoint_without_the_heads_a_term_needs_is_refused(teachers):
    cfg = load_config(None, ["data.train=x.tar", "teacher.mode=frozen", f"teacher.checkpoint={teachers['frozen_heads']}"])
    assert make_plan(cfg).teacher == "frozen_heads"
    cfg = load_config(None, ["data.train=x.tar", "teacher.mode=frozen",
                             f"teacher.checkpoint={teachers['frozen_features']}"])
    assert (make_plan(cfg).distill, make_plan(cfg).mask) == ("features", "features")


# --------------------------------------------------------------------------- host syncs and recompiles
CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class HostSyncCounter:
    """Counts tensor → Python conversions (each a device sync on an accelerator) made outside torch itself
    (torch's optimisers read their CPU step counters, which never sync)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        torch_dir = str(Path(torch.__file__).parent)
        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if not caller.startswith(torch_dir):
                    self.calls.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def prepared_trainer(shards, tmp_path, *extra) -> tuple[Trainer, object]:
    trainer = Trainer(load_config(None, overrides(shards, tmp_path, *extra, steps=10)))
    batches = trainer.start()
    trainer.module.train()
    return trainer, batches


def test_a_non_logging_step_syncs_the_host_once(shards, tmp_path, monkeypatch):
    trainer, batches = prepared_trainer(shards, tmp_path, "run.grad_accum=2", "run.log_every=100")
    warm = [next(batches) for _ in range(2)]  # first step: centres are initialised from the first batch
    for _ in range(2):
        s = trainer.schedule(trainer.step)
        trainer.after_step(trainer.train_step(iter(warm), s), s)
    steady = [next(batches) for _ in range(2)]  # fetched before counting: the data loader is not the step
    counter = HostSyncCounter(monkeypatch)
    schedule = trainer.schedule(trainer.step)
    result = trainer.train_step(iter(steady), schedule, with_stats=False)
    trainer.after_step(result, schedule)
    trainer.maybe_log(result, schedule)  # not a logging step: nothing to convert
    assert len(counter.calls) <= 1, counter.calls
    assert not result.skipped and all(isinstance(v, torch.Tensor) for v in result.losses.values())


def test_a_compiled_steady_state_step_does_not_recompile(shards, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    trainer, batches = prepared_trainer(shards, tmp_path, "run.compile=true", "run.compile_backend=aot_eager",
                                        "model.drop_path_rate=0")

    def step() -> None:
        s = trainer.schedule(trainer.step)
        trainer.after_step(trainer.train_step(batches, s), s)

    for _ in range(3):
        step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the blocks really are compiled
    for _ in range(2):
        step()
    assert counters["stats"]["unique_graphs"] == graphs
