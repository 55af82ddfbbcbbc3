"""Dotted ``key=value`` overrides of a YAML config, the one syntax every TIPS command takes after ``--config``.

    tips-train --config configs/pretrain/demo_cpu.yaml run.steps=100 "data.train=[a-{000..009}.tar, b.tar]"
    tips-probe depth --config configs/probe/scenes_depth.yaml ... optim.lr=3e-4 depth.bins=64
    tips-probe retrieval --config my_retrieval.yaml ... cls=syn batch_size=32

Values are YAML (``3``, ``0.5``, ``text``, ``[1, 2]``, ``{a: 1}``); a value for a field typed ``str`` stays text
(YAML would read ``no`` as the boolean False), and keys listed as shard-pattern lists keep their brace patterns.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

ACCEPTED_FORMS = "key=3, key=0.5, key=text, key=[1, 2], key={a: 1, b: 2}"


def parse_override(
    override: str, base: Any = None, list_keys: Sequence[str] = (), hint: str = ""
) -> DictConfig:
    """One ``key=value`` → a config fragment ``{key: value}`` (nested by the dots of ``key``).

    base: the config the override applies to; text fields of a structured config keep their value as text.
    list_keys: keys whose value is a list of shard patterns (``a-{0..9}.tar`` or ``[a-{0..9}.tar, b.tar]``).
    hint: appended to the accepted forms in the error (e.g. how a command's list keys are written).
    Raises ValueError naming the override and the accepted forms.
    """
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r}: expected key=value ({ACCEPTED_FORMS}{hint})")
    if key in list_keys:
        value = json.dumps(split_pattern_list(value))
    elif base is not None and _is_text_field(base, key) and not value.startswith(("'", '"')):
        value = json.dumps(value)
    try:
        return OmegaConf.from_dotlist([f"{key}={value}"])
    except Exception as exn:  # OmegaConf / YAML parser errors
        reason = str(exn).splitlines()[0]
        raise ValueError(
            f"override {override!r} is not valid ({reason}). Accepted forms: {ACCEPTED_FORMS}{hint}"
        ) from None


def _is_text_field(base: Any, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    try:
        kind = OmegaConf.get_type(node, leaf)
        return node is not None and (kind is str or (isinstance(kind, type) and issubclass(kind, Enum)))
    except Exception:  # not a structured field (e.g. a free-form dict): YAML decides
        return False


def split_pattern_list(value: str) -> list[str]:
    """``a-{0..9}.tar`` or ``[a-{0..9}.tar, "b.tar"]`` → the list of patterns (commas inside braces stay)."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text] if text else []
    items, depth, current = [], 0, ""
    for char in text[1:-1]:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip().strip("'\"") for item in items if item.strip()]


def override_items(overrides: Sequence[str], base: Any = None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` → ``[("a.b", 1), ("c", "x")]``: each override parsed by :func:`parse_override`."""
    items = []
    for override in overrides:
        key = override.partition("=")[0]
        fragment = OmegaConf.to_container(parse_override(override, base))
        value: Any = fragment
        for part in key.split("."):
            value = value[part]  # type: ignore[index]
        items.append((key, value))
    return items
