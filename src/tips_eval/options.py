"""One option mechanism for every ``tips-probe`` subcommand: a dataclass schema (OmegaConf structured config, choices
as ``Literal``s that OmegaConf checks), merged as defaults < ``--config YAML`` < flags < ``key=value`` overrides.

:func:`merge_options` is that merge; the dense probes (:func:`tips_eval.probes.config.load_probe_config`, dotted
keys such as ``optim.lr``) and the global tasks (:func:`parse_task_args`, keys are the flags' long names with
underscores or dashes: ``batch_size`` is ``--batch-size``) both call it. Values are YAML, read by
:func:`tips.io.overrides.parse_override` as in ``tips-train``. Every mistake is one line naming where it came from
(the file, the flag or the override), the key, and the accepted keys or values.

    tips-probe retrieval --config retrieval.yaml --random-init tiny cls=syn batch_size=16
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from tips.cli.errors import CliParser
from tips.io.overrides import parse_override
from tips.io.recipes import resolve_recipe

T = TypeVar("T")
PARSER_ONLY = {"config", "overrides", "debug", "help"}  # flags of the command line, not options of the task
SCENES = "tips-scenes -o data/scenes --num-pretrain 0 --num-train 64 --num-val 16 --resolution 64"


class OptionError(ValueError):
    """A mistake in a ``--config`` file, a flag or a ``key=value`` override, as one line."""


def examples(*commands: str, scenes: bool = True) -> str:
    """An argparse epilog: with ``scenes`` first the command that writes the embedded scenes dataset, then
    ``commands`` (a ``# ...`` entry is a comment line)."""
    lines = ["examples:"]
    if scenes:
        lines += ["  # the embedded scenes dataset (no download), then a random tower (a baseline)", f"  {SCENES}"]
    return "\n".join([*lines, *(f"  {c}" for c in commands)]) + "\n"


# ----------------------------------------------------------------------------- the merge
def merge_options(
    schema: type[T],
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    preset: Callable[[DictConfig], Mapping[str, Any]] | None = None,
) -> T:
    """defaults of ``schema`` < ``preset`` < ``config`` (a YAML file or a bundled recipe's name) < ``flags``
    (``{dotted key: value}``, None = not given) < ``overrides`` (``key=value``) → a ``schema`` instance.

    ``preset``: settings computed from the merged choices (e.g. a probe's task and protocol), slotted in under the
    file. Keys may use dashes for underscores. Raises :class:`OptionError`, one line naming the layer, the key and
    the accepted keys or values; a field left ``MISSING`` is named with the ways to give it.
    """
    base = OmegaConf.structured(schema)
    layers: list[tuple[str, DictConfig]] = []
    if config is not None:
        try:
            path = resolve_recipe(config)  # a file, or a bundled recipe's name
        except FileNotFoundError as e:
            raise OptionError(str(e)) from None
        data = OmegaConf.load(path)
        if not isinstance(data, DictConfig):
            raise OptionError(f"--config {path}: expected a mapping of option names to values")
        layers.append((f"--config {path}:", _dashes_to_underscores(data)))
    given = {k.replace("-", "_"): v for k, v in (flags or {}).items() if v is not None}
    if given:
        layer = OmegaConf.create()
        for key, value in given.items():
            OmegaConf.update(layer, key, value, force_add=True)
        layers.append(("flag", layer))
    for override in overrides:
        key, sep, value = override.partition("=")
        try:
            fragment = parse_override(f"{key.replace('-', '_')}{sep}{value}", base)
        except ValueError as e:
            raise OptionError(str(e)) from None
        layers.append(("override", fragment))
    cfg = _merge_layers(base, layers, schema)
    if preset is not None:
        cfg = _merge_layers(OmegaConf.merge(base, preset(cfg)), layers, schema)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise OptionError(f"{key} is required: give --{key.replace('_', '-')}, a {key}: line in --config, "
                          f"or {key}=VALUE")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _merge_layers(cfg: DictConfig, layers: Sequence[tuple[str, DictConfig]], schema: type) -> DictConfig:
    for where, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise OptionError(_merge_error(where, e, cfg, layer, schema)) from None
    return cfg


def _dashes_to_underscores(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.create({str(k).replace("-", "_"): _dashes_to_underscores(v) for k, v in node.items()})
    return node


def _merge_error(where: str, error: OmegaConfBaseException, cfg: DictConfig, layer: DictConfig, schema: type) -> str:
    """OmegaConf's multi-line merge error as one line: the unknown key with the keys its section has, the value
    with the accepted choices, or the value and why it does not fit the field."""
    key = str(getattr(error, "full_key", None) or "")
    if isinstance(error, ConfigKeyError) and key:
        section, _, _ = key.rpartition(".")
        node = OmegaConf.select(cfg, section) if section else cfg
        known = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else ""
        of = f" of {section}" if section else ""
        return f"{where} {key}: no such option" + (f"; the keys{of} are {known}" if known else "")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not key:
        return f"{where} {reason}"
    value = OmegaConf.select(layer, key, default=None, throw_on_missing=False)
    allowed = choices(schema, key)
    if allowed:
        return f"{where} {key}={value!r}: expected one of {', '.join(allowed)}"
    return f"{where} {key}={value!r}: {reason}"


def choices(schema: type, key: str) -> tuple[str, ...]:
    """The accepted values of a dotted ``key`` of a dataclass ``schema`` whose type is a ``Literal`` or an Enum
    (optional or not); () for any other field."""
    kind: Any = schema
    for part in key.split("."):
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            return ()
        kind = typing.get_type_hints(kind).get(part)
    args = [a for a in typing.get_args(kind) if a is not type(None)] if _is_optional(kind) else [kind]
    kind = args[0] if len(args) == 1 else None
    if typing.get_origin(kind) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(kind))
    if isinstance(kind, type) and issubclass(kind, Enum):
        return tuple(str(m.value) for m in kind)
    return ()


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


# ----------------------------------------------------------------------------- the global tasks' command line
class TaskParser(CliParser):
    """A subcommand's parser that carries its option schema: flags keep their spellings (and their help), the
    schema holds the defaults, the choices and what is required (a flag, a ``--config`` key or ``key=value``)."""

    def __init__(self, *args: Any, schema: type, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema = schema


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config YAML`` and the positional ``KEY=VALUE`` overrides; parse with :func:`parse_task_args`."""
    parser.add_argument("--config", metavar="YAML",
                        help="YAML of option values, keys as the flags' long names (e.g. batch_size: 16), or a bundled "
                             "recipe's name; flags and KEY=VALUE overrides win over it")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="option overrides, applied last, e.g. cls=syn batch_size=16 (the keys of --config)")


def parse_task_args(parser: TaskParser, argv: Sequence[str] | None) -> Any:
    """``argv`` → an instance of ``parser.schema``: its defaults < ``--config`` < the flags given < ``key=value``.
    A mistake exits 2 with one line (:meth:`CliParser.error`)."""
    fields = [f.name for f in dataclasses.fields(parser.schema)]
    # Every option starts as None, so the namespace tells which flags were given (argparse leaves set attributes)
    unset = argparse.Namespace(**dict.fromkeys(fields))
    args = parser.parse_args(None if argv is None else list(argv), namespace=unset)
    unknown = sorted(set(vars(args)) - set(fields) - PARSER_ONLY)
    if any(not name.startswith("_renamed_") for name in unknown):  # a flag the schema would silently drop
        raise TypeError(f"{parser.prog}: the flags {unknown} have no field in {parser.schema.__name__}")
    flags = {name: getattr(args, name) for name in fields}
    try:
        return merge_options(parser.schema, args.config, flags, args.overrides)
    except OptionError as e:
        _fail(parser, str(e))


def _fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)
    raise AssertionError  # parser.error exits
