"""``--config YAML`` and ``key=value`` overrides for the ``tips-probe`` subcommands that have no config schema of
their own (zero-shot, retrieval, knn, zero-shot-seg, compression), so that every subcommand takes the same style.

Keys are the flags' long names, with underscores or dashes (``batch_size`` is ``--batch-size``); values are YAML,
read by :func:`tips.io.overrides.parse_override`. Later wins: defaults, then the ``--config`` file, then the flags,
then the ``key=value`` overrides, as in the dense probes and ``tips-train``.

    tips-probe retrieval --config retrieval.yaml --random-init tiny cls=syn batch_size=16
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tips.io.overrides import override_items
from tips.io.recipes import resolve_recipe

NOT_OPTIONS = {"help", "config", "overrides"}
SCENES = "tips-scenes -o data/scenes --num-pretrain 0 --num-train 64 --num-val 16 --resolution 64"


def examples(*commands: str, scenes: bool = True) -> str:
    """An argparse epilog: with ``scenes`` first the command that writes the embedded scenes dataset, then
    ``commands`` (a ``# ...`` entry is a comment line)."""
    lines = ["examples:"]
    if scenes:
        lines += ["  # the embedded scenes dataset (no download), then a random tower (a baseline)", f"  {SCENES}"]
    return "\n".join([*lines, *(f"  {c}" for c in commands)]) + "\n"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config YAML`` and the positional ``KEY=VALUE`` overrides; parse with :func:`parse_task_args`."""
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="YAML of option values, keys as the flags' long names (e.g. batch_size: 16); "
                             "flags and KEY=VALUE overrides win over it")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="option overrides, applied last, e.g. cls=syn batch_size=16 (the keys of --config)")


def parse_task_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` values as defaults and ``key=value`` overrides applied on top."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_OPTIONS}
    from_file = _config_values(parser, actions, known.config) if known.config is not None else {}
    relaxed = [a for dest, a in actions.items() if dest in from_file and a.required]
    for action in relaxed:  # a value in the file satisfies a required flag
        action.required = False
    parser.set_defaults(**from_file)
    try:
        args = parser.parse_args(argv)
    finally:
        for action in relaxed:
            action.required = True
    try:
        items = override_items(args.overrides)
    except ValueError as e:
        parser.error(str(e))
    for key, value in items:
        dest, action = _action(parser, actions, key, f"override {key}")
        setattr(args, dest, _convert(parser, action, value, f"override {key}={value}"))
    return args


def _config_values(parser: argparse.ArgumentParser, actions: dict, path: Path) -> dict[str, Any]:
    try:
        path = resolve_recipe(path)  # a file, or a bundled recipe's name
    except FileNotFoundError as e:
        parser.error(str(e))
    data = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    values = {}
    for key, value in data.items():
        dest, action = _action(parser, actions, str(key), f"--config {path}: key {key}")
        values[dest] = _convert(parser, action, value, f"--config {path}: {key}: {value!r}")
    return values


def _action(parser: argparse.ArgumentParser, actions: dict, key: str, where: str) -> tuple[str, argparse.Action]:
    dest = key.replace("-", "_")
    if dest not in actions:
        parser.error(f"{where}: no such option; the keys are {', '.join(sorted(actions))}")
    return dest, actions[dest]


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag would have parsed it: the flag's type, its choices, True/False for switches."""
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            parser.error(f"{where}: expected true or false")
        return value
    if isinstance(value, list) and action.nargs in ("*", "+"):
        return [_convert_one(parser, action, v, where) for v in value]
    return _convert_one(parser, action, value, where)


def _convert_one(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    text = value if isinstance(value, str) else str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        parser.error(f"{where}: {e}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"{where}: expected one of {', '.join(map(str, action.choices))}")
    return converted
