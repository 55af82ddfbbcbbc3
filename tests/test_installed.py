"""The package as a user installs it (issue 41): a wheel carries every recipe, so ``tips-demo`` and
``tips-train --config NAME`` run from any folder; ``import tips`` is the installed package even beside a folder
called ``tips/`` (a clone). Also the recipe table: ``--config NAME`` and ``--list-configs`` (fast)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tips.io.recipes import RECIPES, list_recipes, resolve_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_every_bundled_recipe_resolves_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = list_recipes()
    assert {"pretrain/demo_cpu", "finetune/captions", "probe/nyu_lin1", "model/tips_tiny", "accelerate/ddp_8gpu"} <= set(names)
    for name in names:
        for spelling in (name, f"{name}.yaml", f"configs/{name}.yaml"):
            assert resolve_recipe(spelling) == RECIPES / f"{name}.yaml"
    assert resolve_recipe("demo_cpu") == RECIPES / "pretrain" / "demo_cpu.yaml"  # a unique stem is enough
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "demo_cpu.yaml").write_text("run: {steps: 1}\n")
    assert resolve_recipe("pretrain/demo_cpu.yaml") == Path("pretrain/demo_cpu.yaml")  # an existing file wins
    with pytest.raises(FileNotFoundError, match="--list-configs"):
        resolve_recipe("pretrain/demo_gpu")


def test_the_commands_take_bundled_names_and_list_them(tmp_path, monkeypatch, capsys):
    from tips.cli.train import main as train_main
    from tips_eval.cli import main as probe_main
    from tips_eval.probes.config import load_probe_config
    from tips.train.config import load_config

    monkeypatch.chdir(tmp_path)
    for main in (train_main, probe_main):
        assert main(["--list-configs"]) == 0
        listed = capsys.readouterr().out
        assert all(name in listed for name in list_recipes())
    cfg = load_config(["pretrain/demo_cpu", "model/tips_tiny"], ["data.train=x.tar", "run.steps=3"])
    assert cfg.model.variant == "tiny" and cfg.run.steps == 3
    assert load_probe_config("probe/nyu_lin4", task="depth").depth.head == "lin4"
    assert train_main(["--config", "pretrain/nope", "data.train=x.tar"]) == 2
    assert "pretrain/nope" in capsys.readouterr().err


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (cmd, out.stdout[-1500:], out.stderr[-1500:])
    return out


def _clone_beside(folder: Path) -> Path:
    """A folder holding a directory called ``tips/`` without ``__init__.py``: what a clone looks like from its parent."""
    (folder / "tips" / "docs").mkdir(parents=True)
    (folder / "tips" / "README.md").write_text("a clone\n")
    return folder


@pytest.mark.slow  # builds and installs a wheel, then runs the scenes stage of tips-demo and one training step
def test_a_wheel_runs_the_demo_and_a_bundled_recipe_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
         ROOT, dict(os.environ))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    (wheel,) = wheels.glob("tips-*.whl")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path, env)
    away = _clone_beside(tmp_path / "elsewhere")
    where = _run([str(python), "-c", "import tips, tips_eval; print(tips.__file__); print(tips.load.__module__)"],
                 away, env).stdout.split()
    assert Path(where[0]).is_relative_to(env_dir) and where[1] == "tips.formats.loading"

    demo = subprocess.Popen([str(env_dir / "bin" / "tips-demo"), "-o", "demo", "--num-pretrain", "8", "--num-train",
                             "4", "--num-val", "4", "--steps", "1"], cwd=away, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in demo.stdout:  # stage 1 (the scenes data) finishes, stage 2 starts: the recipe was found
        seen.append(line)
        if line.startswith("== 2/4"):
            demo.terminate()
            break
    demo.wait(timeout=120)
    assert any(line.startswith("== 2/4") for line in seen), "".join(seen)[-2000:]
    shards = sorted((away / "demo" / "scenes" / "pretrain").glob("shard-*.tar"))
    assert shards

    _run([str(env_dir / "bin" / "tips-train"), "--config", "pretrain/demo_cpu", "-o", "run", f"data.train={shards[0]}",
          "run.steps=1", "run.batch_size=4", "data.num_workers=0"], away, env)
    assert (away / "run" / "final" / "config.json").is_file()


@pytest.mark.slow  # a subprocess with a cold import of torch
def test_import_tips_beside_a_clone_folder_is_the_installed_package(tmp_path):
    """Run from the folder that holds a clone called ``tips/``: the installed package must win over the folder,
    which Python would otherwise import as a namespace package without ``tips.load``."""
    away = _clone_beside(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import tips; print(tips.__file__); print(tips.load.__module__)"],
                         cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    file, module = out.stdout.split()
    assert not Path(file).is_relative_to(away) and module == "tips.formats.loading"
