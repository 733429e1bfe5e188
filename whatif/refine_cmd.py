"""`whatif refine`: free text -> structured findings and the canonical condition text (JSON)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from whatif.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "refine",
        help="turn a report or a request into structured findings and the canonical condition text",
        description="Prints JSON. Backend from WHATIF_REFINER_BACKEND (default 'rules': offline, deterministic).",
    )
    p.add_argument("text", nargs="?", help="a report or a request, e.g. 'add a small left pleural effusion'")
    p.add_argument(
        "--request", action="store_true", help="treat TEXT as a request: an error if no finding is recognised"
    )
    p.add_argument("--batch", metavar="IN.jsonl", help='one {"id": ..., "text": ...} per line; results one per line')
    p.add_argument("--out", metavar="OUT.jsonl", help="with --batch: write here instead of standard output")
    p.add_argument("--eval-iu-xray", action="store_true", help="score on the real IU-Xray reports and print the table")
    p.add_argument(
        "--fold", choices=["dev", "heldout", "both"], default="both", help="with --eval-iu-xray (default both)"
    )
    p.add_argument("--docs", metavar="FILE.md", help="with --eval-iu-xray: also write both folds' tables to this file")
    p.set_defaults(func=_run)


def _run(args) -> int:

    modes = sum(bool(x) for x in (args.text is not None, args.batch, args.eval_iu_xray))
    if modes != 1:
        raise UsageError("give exactly one of TEXT, --batch IN.jsonl or --eval-iu-xray")
    if args.eval_iu_xray:
        return _evaluate(args)
    from model.refine import Refiner

    refiner = Refiner()
    if args.text is not None:
        result = refiner.request(args.text) if args.request else refiner(args.text)
        print(result.model_dump_json(indent=2))
        return 0
    return _batch(refiner, Path(args.batch), args.out)


def _batch(refiner, path: Path, out_path: str | None) -> int:

    if not path.is_file():
        raise UsageError(f"--batch {path}: no such file")
    out = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout
    n = 0
    t0 = time.perf_counter()
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    text = item["text"]
                    ident = item["id"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(f'{path}:{lineno}: expected a JSON object with "id" and "text"') from None
                if not isinstance(text, str):
                    raise UsageError(f'{path}:{lineno}: "text" must be a string')
                result = refiner(text)
                out.write(json.dumps({"id": ident, **result.model_dump()}, separators=(",", ":")) + "\n")
                n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - t0
    print(f"refined {n} texts in {seconds:.2f} s ({n / max(seconds, 1e-9) * 60:,.0f} a minute)", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    from training.iu_xray import read_reports
    from training.refine_eval import evaluate, table

    reports = list(read_reports())
    folds = ["dev", "heldout"] if args.fold == "both" else [args.fold]
    if args.docs:
        folds = ["dev", "heldout"]
    results = {fold: evaluate(fold, reports=reports) for fold in folds}
    for fold in folds:
        print(table(results[fold]))
        print()
    if args.docs:
        from training.refine_eval import KeywordBaseline, markdown

        baseline = evaluate("heldout", refiner=KeywordBaseline(), reports=reports)
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        Path(args.docs).write_text(markdown(results["dev"], results["heldout"], baseline))
        print(f"wrote {args.docs}")
    return 0
