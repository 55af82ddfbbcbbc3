"""One error style for every console script: a usage mistake is one line and exit 2, a failure one line and exit 1,
and the traceback only with ``--debug`` (or ``TIPS_DEBUG=1``).

    parser = CliParser(prog="tips-x", ...)     # argparse whose errors are one line (exit 2)
    add_debug_arg(parser)
    renamed(parser, "--workers", "--num-workers")   # an old spelling answers with the new name
    args = parser.parse_args(argv)
    return run_main(parser.prog, lambda: body(args), debug=args.debug)

Applications (``tips_eval``, ``tips_pipelines``) import these too, so every ``tips-*`` command answers alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Any, Callable, NoReturn

DEBUG_ENV = "TIPS_DEBUG"


class UsageError(Exception):
    """A mistake in the command line found after parsing (exit 2, like argparse's own)."""


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE (PROG --help lists the options)``,
    instead of the whole usage block (exit status 2 as argparse's), and whose help prints no RST markup."""

    def format_help(self) -> str:
        # descriptions come from module docstrings, whose ``code`` spans are RST, not text for a terminal
        return super().format_help().replace("``", "")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_first_line(message)} ({self.prog} --help lists the options)\n")


def debug_requested(flag: bool = False) -> bool:
    """True with ``--debug`` or a true ``TIPS_DEBUG`` in the environment."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def add_debug_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--debug``: show the full traceback of an error."""
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")


def renamed(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str) -> None:
    """Refuse the old spelling ``old`` of a flag with a one-line hint naming ``new`` (hidden from ``--help``)."""

    class _Renamed(argparse.Action):
        def __call__(self, p: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
            p.error(f"{old} is now {new}")

    parser.add_argument(old, nargs="?", action=_Renamed, help=argparse.SUPPRESS, dest=f"_renamed_{old.lstrip('-')}")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _deliberate(exc: BaseException) -> bool:
    """An error raised on purpose with a message for the user: ours, or the kinds that name a value or a file."""
    return isinstance(exc, (ValueError, KeyError, OSError, UsageError)) or type(exc).__module__.split(".")[0] in (
        "tips", "tips_eval", "tips_pipelines")


def error_line(prog: str, exc: BaseException) -> str:
    """``PROG: error: MESSAGE`` from an exception's first line (a KeyError's message without its quotes); an
    exception we did not raise on purpose also names its type."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    text = _first_line(str(message)) or type(exc).__name__
    if not _deliberate(exc):
        text = f"{type(exc).__name__}: {text}"
    return f"{prog}: error: {text}"


@contextlib.contextmanager
def one_line_warnings(prog: str):
    """Inside: a warning of our own (a ``tips`` category such as ``SlowPathWarning``) prints as
    ``PROG: warning: MESSAGE``, one line, instead of Python's file-and-source-line pair; others as before."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] in ("tips", "tips_eval", "tips_pipelines"):
            print(f"{prog}: warning: {_first_line(str(message))}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def run_main(prog: str, body: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command's body; an exception becomes one line on stderr and exit 1 (2 for :class:`UsageError`),
    and is re-raised with ``debug`` or ``TIPS_DEBUG=1`` so the traceback shows. Our warnings print as one line
    (:func:`one_line_warnings`)."""
    try:
        with one_line_warnings(prog):
            return int(body() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:
        if debug_requested(debug):
            raise
        hint = "" if _deliberate(e) else " (rerun with --debug for the traceback)"
        print(error_line(prog, e) + hint, file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


def report(prog: str, result: Any, device: Any = None, dtype: str = "float32", quantize: str | None = None) -> int:
    """The success tail of the encoding commands: the result's summary on stdout and, on a CPU where int8 or bfloat16
    would be faster, the hint on stderr. Returns 0."""
    from ..inference.loaded import resolve_device
    from ..inference.precision import print_fast_path_hint

    print(result.summary())
    print_fast_path_hint(prog, resolve_device(device), dtype, quantize)
    return 0
