"""``tips-download``: list (``--print-urls``) or fetch every file of an official model or DPT head name.

    tips-download tips-v2-b14 --print-urls        # what to copy to an offline machine, and where it goes
    tips-download tips-v2-b14 --cache /mnt/tips    # fetch into a folder; later TIPS_CACHE=/mnt/tips tips-extract ...
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..formats import hub
from .errors import CliParser, add_debug_arg, run_main

EXAMPLES = """\
examples:
  tips-download tips-v2-b14 --print-urls
  # fetch into a folder to copy to the offline machine, which then sets TIPS_CACHE=/mnt/tips
  tips-download tips-v2-b14-depth -o /mnt/tips
"""


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(sorted(hub.OFFICIAL_MODELS))
    p = CliParser(
        prog="tips-download", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Fetch (or list) the files of an official model ({names}) or DPT head (e.g. tips-v2-b14-depth).")
    p.add_argument("name", metavar="NAME", help="official model or head name")
    p.add_argument("--print-urls", action="store_true", help="list each file (role, size, sha256, URL, cache path); fetch nothing")
    p.add_argument("-o", "--out", "--cache", metavar="DIR",
                   help="cache folder to fill (default $TIPS_CACHE, else ~/.cache/tips)")
    add_debug_arg(p)
    return p


def _size(n: int | None) -> str:
    return "unknown" if n is None else f"~{n / 1e6:,.0f} MB (estimate)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        files = hub.files_of(args.name, args.out)
    except KeyError as e:
        parser.error(str(e.args[0]))
    if args.print_urls:
        for f in files:
            print(f"{f.role}\t{_size(f.size)}\tsha256={f.sha256 or 'unknown'}\t{f.url}\t-> {f.path}")
        return 0

    def fetch() -> int:
        for path in hub.download(args.name, args.out):
            print(path)
        return 0

    return run_main("tips-download", fetch, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
