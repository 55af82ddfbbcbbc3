"""No documented ``accelerate launch`` prints accelerate's "values were not passed ... had defaults used instead"
notice (issue 41 item 10): each command of README.md, docs/*.md and ``tips-train --help`` goes through accelerate's
own rule (``accelerate.commands.launch._validate_launch_command``) on a machine without an accelerate config file,
and nothing may be defaulted with a notice. The launches the tests run for real (tests/test_trainer.py,
tests/test_demo.py) assert the same on their stderr. And a transformers or ONNX export, run as a user runs it,
prints none of torchao's _pytree lines or onnxruntime's pre-processing hint (slow)."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import pytest

from test_docs_commands import ROOT, documented_commands
from tips.cli.train import EXAMPLES

launch = pytest.importorskip("accelerate.commands.launch")
NOTICE = "had defaults used instead"


def launches() -> list[tuple[str, str]]:
    """(where, the text from ``accelerate launch`` to the module) of every documented launch."""
    texts = [(c.id, c.text) for c in documented_commands()]
    texts += [("tips-train --help", line) for line in EXAMPLES.replace("\\\n", " ").splitlines()]
    found = []
    for where, text in texts:
        match = re.search(r"accelerate launch (.*?-m \S+)", text)
        if match:
            found.append((where, match.group(1)))
    return found


def notice_for(flags: list[str], monkeypatch, caplog) -> str:
    args = launch.launch_command_parser().parse_args(flags)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=launch.logger.name):
        launch._validate_launch_command(args)
    return caplog.text


def _flags(text: str) -> list[str]:
    flags = []
    text = re.sub(r"\$\(\(.*?\)\)|\$\{?\w+\}?", "0", text)  # shell variables and arithmetic: any value parses
    for word in shlex.split(text):
        if word.startswith("src/tips/configs/"):  # the bundled launch configs, named from the clone's root
            word = str(ROOT / word)
        flags.append(word)
    return flags


def test_every_documented_launch_passes_what_accelerate_would_default(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(launch, "default_config_file", str(tmp_path / "no-accelerate-config.yaml"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert NOTICE in notice_for(["-m", "tips.cli.train"], monkeypatch, caplog)  # the rule still prints it bare
    found = launches()
    assert len(found) >= 8, found  # README, training, fine-tuning, scaling and the --help example
    for where, text in found:
        assert NOTICE not in notice_for(_flags(text), monkeypatch, caplog), (where, text)


@pytest.mark.slow  # two fresh Pythons that import torch, transformers and onnxruntime (about 30 s on 2 cores)
@pytest.mark.parametrize("fmt", ["transformers", "onnx"])
def test_an_export_in_a_fresh_process_prints_none_of_the_known_notices(fmt, tmp_path):
    """torchao's _pytree deprecation lines show only in a process that imports it for the first time, and
    onnxruntime's pre-processing hint only with --int8: a subprocess, as a user runs it."""
    import os
    import subprocess
    import sys

    import tips

    model = tips.TIPS(tips.get_variant("tiny", **{"vision.depth": 1, "text.depth": 1, "text.vocab_size": 1000}))
    tips.save(model, tmp_path / "model")
    extra = ["--int8", "--resolution", "56"] if fmt == "onnx" else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tips.cli.export", "--model", str(tmp_path / "model"), "--format",
                           fmt, "-o", str(tmp_path / fmt), *extra], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for line in ("_pytree", "Enum subclass", "pre-processing before quantization", "Please consider"):
        assert line not in proc.stderr, proc.stderr
