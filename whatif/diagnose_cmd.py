"""`whatif diagnose NAME`: questions about a checkpoint, answered on the validation phantoms."""

from __future__ import annotations

import argparse

from whatif.errors import UsageError


def add_parser(sub) -> None:
    d = sub.add_parser(
        "diagnose",
        help="answer a question about a checkpoint on validation phantoms (--list; docs/diagnostics.md)",
        description="Run one diagnostic on the validation phantoms (identities no report is scored on). "
        "`whatif diagnose --list` lists them; `whatif diagnose NAME --help` shows one's options.",
    )
    d.add_argument("--list", action="store_true", help="list the diagnostics with the question each answers")
    d.add_argument("name", nargs="?", help="the diagnostic to run")
    d.add_argument("args", nargs=argparse.REMAINDER, help="its options (see `whatif diagnose NAME --help`)")
    d.set_defaults(func=_diagnose)


def _diagnose(args) -> int:
    from training.diagnostics import DIAGNOSTICS, load

    if args.list or args.name is None:
        for name in DIAGNOSTICS:
            module = load(name)
            print(f"{name:18} {module.QUESTION} ({module.RUNTIME})")
        return 0
    if args.name not in DIAGNOSTICS:
        raise UsageError(f"unknown diagnostic {args.name!r}; one of {', '.join(DIAGNOSTICS)}")
    module = load(args.name)
    parser = argparse.ArgumentParser(
        prog=f"whatif diagnose {args.name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    module.run(parser.parse_args(args.args))
    return 0
