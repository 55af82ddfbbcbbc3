"""run.parallel=fsdp: FSDP2 against DDP on 2 CPU processes (gloo), SIGKILL and resume, resharding resume
(2 → 1, 1 → 2), loopback multi-node, and the analytic FLOPs against torch.utils.flop_counter.

The multi-process tests are ``slow`` (each launches several 2-process runs on CPU); the in-process ones are fast.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from test_run_folder import plant
from test_trainer import TINY, env, finish, write_shards

import tips
from tips.train import checkpointing
from tips.train.config import load_config
from tips.train.flops import peak_tflops, step_flops
from tips.train.checkpointer import read_tensors, resumed_position

HERE = Path(__file__).resolve().parent
STEPS = 20
COMMON = [f"run.steps={STEPS}", "run.save_every=4", "run.keep_last=10", "optim.lr=1e-3", "optim.warmup_frac=0.1",
          "data.num_workers=1", *TINY]


def launcher(n: int) -> list[str]:
    if n == 1:
        return [sys.executable, "-m"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--main_process_port", "0", "-m"]


def cpu_env(tmp: Path) -> dict[str, str]:
    e = env()
    e.update(ACCELERATE_USE_CPU="1", HF_HOME=str(tmp / "hf"), PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE.parent)]))
    return e


def start(args: list[str], n: int, tmp: Path, script: str | None = None) -> subprocess.Popen:
    """``tips.train`` (or the file ``script``) on ``n`` CPU processes."""
    cmd = (launcher(n) + ["tips.cli.train"] if script is None else launcher(n)[:-1] + [script]) + args
    return subprocess.Popen(cmd, env=cpu_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torch's elastic agent starts the workers in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker at once, as a node failure would."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(glob.glob(str(run / "tips" / "events.out.tfevents.*"))[0])
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def export_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=atol), (k, (a[k] - b[k]).abs().max())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def fsdp_run(shards, tmp_path_factory) -> Path:
    """An uninterrupted 2-process FSDP run of STEPS steps, checkpoints every 4 (all kept)."""
    out = tmp_path_factory.mktemp("fsdp")
    finish(start([f"data.train={shards}", f"run.output_dir={out}", "run.parallel=fsdp", *COMMON], 2, out), 600)
    return out


# --------------------------------------------------------------------------- FSDP against DDP
@pytest.mark.slow  # two 2-process runs of 20 steps: about 1.5 min on 2 cores
def test_fsdp_matches_ddp_step_by_step_and_shards_the_state(shards, fsdp_run, tmp_path):
    ddp = tmp_path / "ddp"
    finish(start([f"data.train={shards}", f"run.output_dir={ddp}", "run.parallel=ddp", *COMMON], 2, tmp_path), 600)
    for tag in ("loss/loss", "loss/contrastive_alt", "loss/contrastive_syn", "loss/distill", "loss/mask"):
        a, b = scalars(ddp, tag), scalars(fsdp_run, tag)
        assert len(a) == len(b) == STEPS
        for step, (x, y) in enumerate(zip(a, b), 1):
            assert abs(x - y) <= 1e-4 * abs(x), (tag, step, x, y)
    # relative 1e-4, with an absolute floor for near-zero entries (biases start at 0)
    assert_close(export_weights(ddp / "final"), export_weights(fsdp_run / "final"), rtol=1e-4, atol=1e-5)
    # Each rank writes exactly the chunks it holds: under FSDP its shards (per-rank state), under DDP a share of
    # tensors every rank holds whole (the per-rank state is all of them).
    d, f = (checkpointing.latest_checkpoint(run) / "state" for run in (ddp, fsdp_run))
    per_rank_ddp = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    per_rank_fsdp = max(p.stat().st_size for p in f.glob("*.safetensors"))
    assert len(list(f.glob("*.safetensors"))) == 2 and per_rank_fsdp <= 0.6 * per_rank_ddp, (per_rank_fsdp, per_rank_ddp)
    sharded = _chunked_tensors(f)
    assert "model.student.model.vision.blocks.0.attn.qkv.weight" in sharded and "optimizer." in "".join(sharded)
    assert not _chunked_tensors(d)


def _chunked_tensors(state: Path) -> set[str]:
    """Names stored in pieces (a chunk at a non-zero offset): the tensors that were sharded."""
    from safetensors import safe_open

    names = set()
    for file in state.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as h:
            offsets = json.loads(h.metadata()["DCP_SHARDING_INFO"])
        names |= {k for k, v in offsets.items() if any(v["saved_offsets"])}
    return names


# --------------------------------------------------------------------------- kills and resumes
def _wait_for(path_glob: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not glob.glob(path_glob):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.005)
    assert glob.glob(path_glob), f"{path_glob} never appeared"


@pytest.mark.slow  # four partial 2-process runs
@pytest.mark.parametrize("moment", ["run", "save"])
def test_fsdp_sigkill_then_resume_latest_reaches_the_same_weights(shards, fsdp_run, tmp_path, moment):
    out = tmp_path / "killed"
    args = [f"data.train={shards}", f"run.output_dir={out}", "run.parallel=fsdp", *COMMON]
    proc = start(args, 2, tmp_path)
    root = checkpointing.checkpoint_root(out)
    # "run": after step 8's checkpoint is complete; "save": while step 12's is being written (temporary folder).
    _wait_for(str(root / ("step-00000008/trainer.json" if moment == "run" else ".step-00000012.tmp*")), proc)
    kill(proc)
    latest = checkpointing.latest_checkpoint(out)
    assert latest is not None and latest.name in ("step-00000008", "step-00000012")
    assert checkpointing.latest_checkpoint(out).name != "step-00000020" and not (out / "final").exists()
    finish(start(args + ["run.resume=latest"], 2, tmp_path), 600)
    assert_close(export_weights(fsdp_run / "final"), export_weights(out / "final"))
    for step in ("step-00000012", "step-00000020"):
        assert_close(export_weights(fsdp_run / "checkpoints" / step / "export"),
                     export_weights(out / "checkpoints" / step / "export"))


@pytest.mark.slow  # two 2-process runs per strategy
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_resume_with_stochastic_depth_is_bit_identical_and_runs_no_planted_pickle(shards, tmp_path,
                                                                                               parallel):
    args = [f"data.train={shards}", f"run.parallel={parallel}", *COMMON, "run.steps=4", "run.save_every=2",
            "model.overrides={vision.depth: 2}", "model.drop_path_rate=0.1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finish(start(args + [f"run.output_dir={straight}"], 2, tmp_path), 600)
    step2 = resumed / "checkpoints" / "step-00000002"
    shutil.copytree(straight / "checkpoints" / "step-00000002", step2)  # what a run killed after step 2 leaves
    marker = tmp_path / "marker"
    plant(step2, marker)
    out = finish(start(args + [f"run.output_dir={resumed}", "run.resume=latest"], 2, tmp_path), 600)
    assert f"resumed from step 2 ({step2})" in out
    a, b = (read_tensors(run / "checkpoints" / "step-00000004", "") for run in (straight, resumed))
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    assert not marker.exists()


def _dump(checkpoint: Path, shards: str, n: int, tmp: Path, name: str) -> tuple[dict, dict]:
    out = tmp / name
    args = [str(out), f"data.train={shards}", f"run.output_dir={tmp / (name + '_run')}", "run.parallel=fsdp",
            f"run.resume={checkpoint}", *COMMON]
    finish(start(args, n, tmp, script=str(HERE / "fsdp_state_dump.py")), 600)
    return load_file(str(out / "state.safetensors")), json.loads((out / "positions.json").read_text())


@pytest.mark.slow  # 2-process and 1-process resumes of 2- and 1-process checkpoints
def test_fsdp_checkpoints_resume_on_another_world_size_with_the_same_state(shards, fsdp_run, tmp_path):
    two = fsdp_run / "checkpoints" / "step-00000004"
    on_two, pos_two = _dump(two, shards, 2, tmp_path, "2on2")
    on_one, pos_one = _dump(two, shards, 1, tmp_path, "2on1")
    assert any(k.startswith("optimizer.") and k.endswith("exp_avg") for k in on_one)
    assert any(k.startswith("teacher.vision.") for k in on_one)
    assert_close(on_two, on_one, rtol=0, atol=0)
    assert pos_two["positions"] == [4, 4] and pos_one["positions"] == [8]  # same global samples: 2·4·B = 8·B
    assert_close(tips.load(two / "export").state_dict(), {k[len("model.student.model."):]: v for k, v in
                                                          on_one.items() if k.startswith("model.student.model.")},
                 rtol=0, atol=0)

    # 1 → 2: a single-process FSDP checkpoint, resumed on 2 processes
    single = tmp_path / "single"
    finish(start([f"data.train={shards}", f"run.output_dir={single}", "run.parallel=fsdp", *COMMON,
                  "run.steps=2", "run.save_every=2"], 1, tmp_path), 600)
    ckpt = single / "checkpoints" / "step-00000002"
    one_on_one, p11 = _dump(ckpt, shards, 1, tmp_path, "1on1")
    one_on_two, p12 = _dump(ckpt, shards, 2, tmp_path, "1on2")
    assert_close(one_on_one, one_on_two, rtol=0, atol=0)
    assert p11["positions"] == [2] and p12["positions"] == [1, 1]


# --------------------------------------------------------------------------- loopback multi-node
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two "machines" of one process each
def test_two_machines_on_loopback_match_one_machine_with_two_processes(shards, fsdp_run, tmp_path):
    out = tmp_path / "multinode"
    port = _free_port()
    args = [f"data.train={shards}", f"run.output_dir={out}", "run.parallel=fsdp", *COMMON, "run.steps=4",
            "run.save_every=4"]
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "-m", "tips.cli.train", *args]
        procs.append(subprocess.Popen(cmd, env=cpu_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for p in procs:
        finish(p, 600)
    # Same config as fsdp_run except run.steps (which shapes the schedules): compare against a 1-machine run.
    ref = tmp_path / "one_machine"
    finish(start([a.replace(str(out), str(ref)) for a in args], 2, tmp_path), 600)
    assert scalars(out, "loss/loss") == pytest.approx(scalars(ref, "loss/loss"), rel=1e-6)
    assert_close(export_weights(ref / "final"), export_weights(out / "final"), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- fast, in-process
@pytest.fixture
def single_rank_group():
    """An in-process FSDP run initialises a 1-rank process group; later tests must not see it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_single_process_fsdp_trains_checkpoints_with_dcp_and_resumes(shards, tmp_path, single_rank_group):
    from accelerate.state import AcceleratorState, GradientState
    from torch.distributed.tensor import DTensor

    from tips.train.trainer import Trainer

    def trainer(steps: int, *extra: str) -> Trainer:
        cfg = load_config(None, [f"data.train={shards}", f"run.output_dir={tmp_path}", f"run.steps={steps}",
                                 "run.save_every=2", "run.parallel=fsdp", "data.num_workers=0", "optim.lr=1e-3",
                                 *TINY, *extra])
        return Trainer(cfg)

    t = trainer(2)
    assert isinstance(t.model.vision.blocks[0].attn.qkv.weight, DTensor)
    assert isinstance(t.teacher.vision.blocks[0].attn.qkv.weight, DTensor)
    assert isinstance(t.model.text.token_embedding.weight, DTensor)
    final = t.fit()
    step2 = checkpointing.latest_checkpoint(tmp_path)
    # the one format: safetensors chunks and trainer.json, no pickled .metadata and no generator states
    assert sorted(p.name for p in (step2 / "state").iterdir()) == ["shard-00001-model-00001-of-00001.safetensors"]
    assert json.loads((step2 / "trainer.json").read_text())["parallel"] == "fsdp"
    assert torch.equal(read_tensors(step2)["student.model.vision.pos_embed"], t.model.vision.pos_embed.full_tensor())
    model = tips.load(final)
    assert torch.equal(model.vision.pos_embed, t.model.vision.pos_embed.full_tensor())
    teacher_qkv = t.teacher.vision.blocks[0].attn.qkv.weight.full_tensor().clone()

    assert not dist.is_initialized()  # accelerate's end_training destroys the group, ours included
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = trainer(3, "run.resume=latest")
    resumed.start()
    assert resumed.step == 2 and resumed.loader.state_dict()["batches_seen"] == 2
    assert torch.equal(resumed.teacher.vision.blocks[0].attn.qkv.weight.full_tensor(), teacher_qkv)
    assert torch.equal(resumed.model.vision.pos_embed.full_tensor(), model.vision.pos_embed)
    assert resumed.optimizer.optimizer.state  # AdamW moments came back


def test_resumed_data_position_keeps_the_global_sample_count():
    assert resumed_position([5, 5], 4, 4, 2, 1) == 5  # same world: own position
    assert resumed_position([5, 5], 4, 4, 1, 0) == 10  # 2 → 1
    assert resumed_position([6], 4, 4, 2, 0) == 3  # 1 → 2
    assert resumed_position([6], 4, 8, 1, 0) == 3  # larger batch: same samples, fewer batches


def test_analytic_step_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from tips.data import Batch
    from tips.train.builders import build_modules
    from tips.train.plan import make_plan
    from tips.train.student import with_patch_selection

    cfg = load_config(None, ["data.train=unused.tar", *TINY])
    plan = make_plan(cfg)
    torch.manual_seed(0)
    module, teacher = build_modules(cfg, plan)
    model, v = module.student.model, cfg.data.views
    B, N, L = cfg.run.batch_size, (v.global_size // model.patch_size) ** 2, 12
    ids = torch.randint(1, 1000, (B, L))
    padding = torch.zeros(B, L, dtype=torch.bool)
    batch = with_patch_selection(Batch(
        torch.rand(B, 3, v.global_size, v.global_size), torch.rand(B, v.num_local, 3, v.local_size, v.local_size),
        torch.rand(B, N).argsort(1) < round(0.75 * N), ids, padding, ids.flip(1), padding, [str(i) for i in range(B)],
    ), plan)  # fmt: skip
    # The math kernel: the CPU flash kernel of SDPA is invisible to the counter.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        module(batch, teacher, 0.07)["loss"].backward()
    analytic = step_flops(cfg, plan, model.cfg.vision, model.cfg.text, text_len=L,
                          masked_tokens=len(batch.patch_index) / B).per_sample * B
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_peak_flops_of_known_devices():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert peak_tflops("Some Future Accelerator") is None
