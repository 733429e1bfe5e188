"""`whatif eval`: counterfactual quality against phantom ground truth, written to docs/default-model.md."""

from __future__ import annotations

import json
from pathlib import Path

from whatif.errors import UsageError


def add_parser(sub) -> None:
    e = sub.add_parser(
        "eval", help="score a checkpoint on held-out phantom identities (valid edits, regions, side, AUROC)"
    )
    e.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    e.add_argument(
        "--n",
        type=int,
        default=32,
        help="held-out identities of the edit-faithfulness protocol (default 32; 34 requests each); 0 skips it",
    )
    e.add_argument(
        "--table2-n",
        type=int,
        default=16,
        help="held-out identities per target of the paper's Table 2 protocol, with and without seed "
        "optimisation (default 16)",
    )
    e.add_argument(
        "--out",
        help="Markdown report; the contact sheet (or chart) is written beside it (default: docs/default-model.md, "
        "with --downstream docs/augmentation.md)",
    )
    e.add_argument("--start", choices=["inversion", "noise"], help="sampling start (checkpoint default)")
    e.add_argument("--guidance", type=float, help="classifier-free guidance (checkpoint default)")
    e.add_argument(
        "--detail",
        type=float,
        metavar="TAU",
        help="fine-detail restoration, 0 to turn it off (checkpoint default; see `whatif generate --help`)",
    )
    e.add_argument(
        "--seed-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a seed-optimisation setting of the checkpoint "
        "(repeatable), e.g. --seed-opt optimizer=adam --seed-opt lr=0.005",
    )
    e.add_argument(
        "--validation",
        action="store_true",
        help="score identities apart from the evaluation's, to choose settings without touching the reported ones",
    )
    e.add_argument(
        "--write-card",
        action="store_true",
        help="also write MODEL_CARD.md (data, wall time, these metrics) into the checkpoint",
    )
    d = e.add_argument_group("downstream: does `whatif augment` help a classifier on rare findings?")
    d.add_argument(
        "--downstream",
        action="store_true",
        help="train a classifier on long-tailed phantoms alone, with the tail oversampled, and with augment's tail "
        "counterfactuals, three seeds each; AUROC per finding on held-out true phantoms (docs/augmentation.md)",
    )
    d.add_argument("--work", default="runs/downstream", help="--downstream: its resumable state (a rerun continues it)")
    d.add_argument("--workers", type=int, default=1, help="--downstream: processes making the counterfactuals")
    d.add_argument("--quick", action="store_true", help="--downstream: tiny sizes, for a smoke run")
    e.set_defaults(func=_eval)


def _downstream(args) -> int:
    import sys

    from training.longtail.downstream import DownstreamConfig, run_downstream
    from training.longtail.downstream_report import write_report

    out = Path(args.out or "docs/augmentation.md")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create its folder ({exc.strerror})") from None
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    cfg = DownstreamConfig.quick() if args.quick else DownstreamConfig()
    try:
        results = run_downstream(args.work, args.checkpoint, cfg, workers=args.workers)
    except ValueError as exc:  # the work directory's augment run disagrees (training.longtail.output)
        if type(exc).__module__.startswith("training.longtail"):
            raise UsageError(f"--work {args.work}: {exc}") from None
        raise
    command = "whatif eval " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "whatif eval --downstream"
    print(f"wrote {write_report(results, out, command)}")
    return 0


def _eval(args) -> int:
    if args.downstream:
        return _downstream(args)
    from model.pipeline import CounterfactualPipeline
    from training.evaluate import VALIDATION_OFFSET, evaluate_counterfactuals, write_report

    if not (args.n == 0 or 1 <= args.n <= VALIDATION_OFFSET) or not 2 <= args.table2_n <= VALIDATION_OFFSET:
        raise UsageError(
            f"--n must be 0 or between 1 and {VALIDATION_OFFSET}, --table2-n between 2 and {VALIDATION_OFFSET} "
            "(the evaluation's and validation's identities)"
        )
    seed_opt = parse_seed_opt(args.seed_opt)
    out = Path(args.out or "docs/default-model.md")
    try:  # before an hour of cases, not after: the report's folder must be writable
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create its folder ({exc.strerror})") from None
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    try:  # the sampling overrides checked as the pipeline checks them, before any case runs
        pipe.check_inputs(guidance=args.guidance, start=args.start, detail=args.detail)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.validation and args.write_card:
        raise UsageError("--write-card reports the evaluation identities; drop --validation")
    faith = None
    if args.n:
        from training.faithfulness import run_faithfulness

        # overrides of the sampling are the checkpoint's for this protocol too
        pipe.config["sampling"] = {**pipe.config["sampling"], **sampling_overrides(args)}
        sheet = [(k, f) for k in range(2) for f in ("Pleural Effusion", "Cardiomegaly", "Pneumothorax")]
        faith = run_faithfulness(pipe, args.n, validation=args.validation, sheet=sheet)
    result = evaluate_counterfactuals(
        pipe,
        args.table2_n,
        start=args.start,
        guidance=args.guidance,
        detail=args.detail,
        validation=args.validation,
        seed_opt=seed_opt,
    )
    command = (
        f"whatif eval --checkpoint {args.checkpoint or '(embedded)'} --n {args.n} --table2-n {args.table2_n}"
        f"{result['options']}"
    )
    edits_png = out.with_name(out.stem + "-edits.png")
    if faith is not None:
        from training.edit_sheet import write_edit_sheet

        images = faith.pop("images")
        out.with_suffix(".json").write_text(json.dumps(faith, separators=(",", ":")) + "\n")  # every edit's record
        write_edit_sheet(images, edits_png)
    lines = None
    if faith is not None:
        from training.faithfulness import faithfulness_lines

        lines = faithfulness_lines(faith)
    write_report(result, pipe, command, out, out.with_name(out.stem + "-sheet.png"), lines, edits_png)
    print(f"wrote {out}")
    if args.write_card:
        from model.pipeline import default_checkpoint_dir
        from training.model_card import write_model_card

        ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint_dir()
        print(f"wrote {write_model_card(ckpt, pipe.config, result, command, faith)}")
    return 0


def sampling_overrides(args) -> dict:
    """The sampling settings the command line overrides (`--start`, `--guidance`, `--detail`)."""
    given = {"start": args.start, "guidance": args.guidance, "detail": args.detail}
    return {k: v for k, v in given.items() if v is not None}


def _parse_bool(value: str) -> bool:
    # bool("false") is True: a flag's value is read by name, not by Python's truthiness
    words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if value.lower() not in words:
        raise ValueError(value)
    return words[value.lower()]


def parse_seed_opt(items: list[str]) -> dict:
    """`KEY=VALUE` strings -> SeedOptConfig fields, each value of its field's type."""
    import dataclasses

    from model.seed_optimization import SeedOptConfig

    fields = {f.name: type(getattr(SeedOptConfig(), f.name)) for f in dataclasses.fields(SeedOptConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--seed-opt takes KEY=VALUE with KEY one of {', '.join(fields)}; got {item!r}")
        try:
            out[key] = _parse_bool(value) if fields[key] is bool else fields[key](value)
        except ValueError:
            raise UsageError(f"--seed-opt {key} takes a {fields[key].__name__}, got {value!r}") from None
    try:  # the config's own checks (method, optimizer, lr) before any evaluation runs
        SeedOptConfig(**out)
    except ValueError as exc:
        raise UsageError(f"--seed-opt: {exc}") from None
    return out
