"""The `nnrandomness` command: one subcommand per module that does the work.

Each subcommand's module exposes `add_arguments(parser)` and `main(args) -> int`; modules are
imported only when their subcommand runs, so `nnrandomness --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "run": ("nnrandomness.batch", "run a plan of papermill jobs (local pool, GPUs or Ray)"),
    "locate": ("nnrandomness.locate", "find when and where two replicas that should agree diverge"),
    "overhead": ("nnrandomness.overhead.run", "time deterministic against non-deterministic training steps"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnrandomness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # Only the chosen subcommand's module is imported to define its arguments.
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
