"""The ``interfero`` command: every layer's subcommands in one parser.

Errors a user can cause (:class:`interfero.errors.InterferoError`) print one
line on stderr and exit with status 2; nothing else is written.
"""

from __future__ import annotations

import argparse
import sys

from interfero import cli as interfero_cli
from interfero.errors import InterferoError
from priors import cli as priors_cli


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="interfero", description="Bayesian black-hole imaging toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    interfero_cli.add_subcommands(sub)
    priors_cli.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InterferoError as err:
        print(f"interfero {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interfero {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
