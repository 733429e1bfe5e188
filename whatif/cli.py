"""`whatif` entry point: parses the command line and dispatches to a command group.

Errors a user can fix (bad arguments, an unknown finding, an unwritable path; `whatif.errors`)
are printed as one line, `whatif: error: ...`, with exit status 2. Anything else propagates
with its traceback and a non-zero exit: a library bug is not reported as the user's mistake.
"""

from __future__ import annotations

import argparse
import sys

from whatif import augment_cmd, diagnose_cmd, eval_cmd, model_cmd, phantom_cmd, refine_cmd, serve_cmd, train_cmd
from whatif.errors import is_usage_error


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the full usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="whatif",
        description="Counterfactual chest X-rays. The embedded model and the phantom are synthetic: "
        "for demonstration and testing, not for clinical use.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    phantom_cmd.add_parser(sub)
    refine_cmd.add_parser(sub)
    model_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    augment_cmd.add_parser(sub)
    diagnose_cmd.add_parser(sub)
    serve_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("whatif: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_usage_error(exc):
            raise
        parser.exit(2, f"whatif: error: {exc}\n")
