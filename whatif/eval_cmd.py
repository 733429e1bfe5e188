"""`whatif eval`: counterfactual quality against phantom ground truth, written to docs/default-model.md."""

from __future__ import annotations

from pathlib import Path

from whatif.errors import UsageError


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="score a checkpoint on held-out phantom identities (AUROC, SSIM, MAE)")
    e.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    e.add_argument("--n", type=int, default=20, help="held-out identities per target (default 20)")
    e.add_argument(
        "--out", default="docs/default-model.md", help="Markdown report; the contact sheet is written beside it"
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
    e.set_defaults(func=_eval)


def _eval(args) -> int:
    from model.pipeline import CounterfactualPipeline
    from training.evaluate import VALIDATION_OFFSET, evaluate_counterfactuals, write_report

    if not 2 <= args.n <= VALIDATION_OFFSET:
        raise UsageError(
            f"--n must be between 2 and {VALIDATION_OFFSET} (the evaluation's and validation's identities)"
        )
    seed_opt = parse_seed_opt(args.seed_opt)
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    try:  # the sampling overrides checked as the pipeline checks them, before any case runs
        pipe.check_inputs(guidance=args.guidance, start=args.start, detail=args.detail)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.validation and args.write_card:
        raise UsageError("--write-card reports the evaluation identities; drop --validation")
    result = evaluate_counterfactuals(
        pipe,
        args.n,
        start=args.start,
        guidance=args.guidance,
        detail=args.detail,
        validation=args.validation,
        seed_opt=seed_opt,
    )
    out = Path(args.out)
    write_report(result, pipe, args.checkpoint or "(embedded)", out, out.with_name(out.stem + "-sheet.png"))
    print(f"wrote {out}")
    if args.write_card:
        from model.pipeline import default_checkpoint_dir
        from training.model_card import write_model_card

        ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint_dir()
        command = (
            f"whatif eval --checkpoint {args.checkpoint or default_checkpoint_dir()} --n {args.n}{result['options']}"
        )
        print(f"wrote {write_model_card(ckpt, pipe.config, result, command)}")
    return 0


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
