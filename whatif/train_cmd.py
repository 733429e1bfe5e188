"""`whatif train`: the training stages, resumable, the same command under torchrun."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from training.options import Hyper

    t = sub.add_parser("train", help="train a stage (or all) on phantom or real data")
    t.add_argument("stage", choices=["stage0", "stage1", "stage2", "classifier", "all"])
    t.add_argument("--preset", default="phantom-128")
    t.add_argument("--data", required=True, help="phantom:N[:SEED] (rendered on the fly), a `whatif phantom generate` directory, mimic:ROOT, chexpert:ROOT or iu-xray:IMAGES")
    t.add_argument("--out", required=True, help="run directory (checkpoint/, state/, metrics/, curves/)")
    t.add_argument("--steps", type=int, default=1000, help="optimisation steps per stage")
    t.add_argument("--batch-size", type=int, default=16)
    # The options as Hyper declares them; a flag not given is left out, so the field's default holds.
    for name, opt, default in Hyper.options():
        flag, stages = "--" + name.replace("_", "-"), ", ".join(opt.stages)
        if opt.choices:
            t.add_argument(flag, action="append", choices=opt.choices, default=argparse.SUPPRESS, help=f"{stages}: {opt.help}")
        else:
            qualifies = f"; with --{opt.requires.replace('_', '-')}" if opt.requires else ""
            t.add_argument(flag, type=type(default), default=argparse.SUPPRESS, help=f"{stages}{qualifies}: {opt.help} (default {default:g})")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.set_defaults(func=_train)


def _train(args) -> int:
    from training.loop import TrainingError
    from training.options import Hyper
    from training.train import train
    from whatif.errors import UsageError

    hp = Hyper.from_options({name: getattr(args, name) for name, _, _ in Hyper.options() if hasattr(args, name)})
    try:
        report = train(args.stage, args.preset, args.data, args.out, args.steps, args.batch_size, args.resume, args.seed, hp)
    except TrainingError as exc:
        raise UsageError(str(exc)) from None
    print(f"done in {report['seconds']:.0f} s; checkpoint in {args.out}/checkpoint")
    return 0
