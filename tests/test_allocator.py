"""The command-line tools' glibc malloc settings: applied once, and never over the user's own choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tips.cli import allocator


@pytest.mark.parametrize("env, chose", [
    ({}, False),
    ({"TIPS_MALLOC": "default"}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, True),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, True),
    ({"LD_PRELOAD": "/opt/libfoo.so"}, False),
])
def test_the_users_own_allocator_settings_win(env, chose):
    assert allocator.user_chose_allocator(env) is chose


def run_tune(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in (*allocator.USER_SETTINGS, "TIPS_MALLOC")} | extra_env
    code = "from tips.cli.allocator import tune_cpu_allocator as t; print(t(), t())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not allocator._is_glibc(), reason="mallopt is glibc's; other C libraries are left alone")
def test_tuning_applies_once_on_glibc_and_not_when_opted_out():
    assert run_tune({}).split() == ["True", "True"]
    assert run_tune({"TIPS_MALLOC": "default"}).split() == ["False", "False"]
