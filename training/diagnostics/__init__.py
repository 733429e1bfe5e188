"""Diagnostics: questions about a checkpoint, answered on the validation phantoms.

Each module answers one question and exposes `QUESTION` (one line), `RUNTIME` (measured on the
2-core CPU machine), `add_arguments(parser)` and `run(args)`. `whatif diagnose NAME` runs one;
`whatif diagnose --list` lists them; docs/diagnostics.md says what each is for. They all draw
their cases from `training.evaluate.validation_cases`, identities no report is scored on, so a
setting chosen with them was not chosen on the evaluation's cases. (`segmenter`, which scores
no counterfactual, draws identities past those and render seeds of its own.)

The modules are imported only when run (they import torch); this file names them.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

# name -> module under training.diagnostics
DIAGNOSTICS = {
    "auroc-spread": "auroc_spread",
    "detail": "detail",
    "disentanglement": "disentanglement",
    "finding-confusion": "finding_confusion",
    "guidance-drift": "guidance_drift",
    "seed-guard": "seed_guard",
    "seed-signal": "seed_signal",
    "segmenter": "segmenter",
    "text-separation": "text_separation",
}


def load(name: str) -> ModuleType:
    """The module of diagnostic `name` (KeyError for an unknown name)."""
    return importlib.import_module(f"{__name__}.{DIAGNOSTICS[name]}")


def identities(text: str) -> int:
    """argparse type of `--n`: validation identities, 2 or more (an AUROC needs several)."""
    from training.evaluate import VALIDATION_OFFSET

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of identities, got {text!r}") from None
    if not 2 <= n <= VALIDATION_OFFSET:
        raise argparse.ArgumentTypeError(f"must be between 2 and {VALIDATION_OFFSET}, got {n}")
    return n


def common_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    """`--checkpoint` and `--n`, which every diagnostic takes."""
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--n", type=identities, default=n, help=f"validation identities (default {n})")
