"""`whatif train`: a training sitting (a stage, or all), or a recipe of sittings.

Resumable, and the same command under torchrun."""

from __future__ import annotations

import argparse

# The sitting's settings when no recipe gives them (with --recipe, each sitting names its own).
SITTING_DEFAULTS = {"preset": "phantom-128", "steps": 1000, "batch_size": 16, "seed": 0}


def add_parser(sub) -> None:
    from training.options import STAGES, Hyper

    t = sub.add_parser("train", help="train a stage (or all, or a recipe's sittings) on phantom or real data")
    t.add_argument("stage", nargs="?", choices=[*STAGES, "all"], help="the stage to train (not with --recipe)")
    t.add_argument(
        "--recipe", help="a recipe (recipes/*.toml): run its sittings in order, those --out has not done yet"
    )
    t.add_argument("--preset", default=argparse.SUPPRESS, help=f"model preset (default {SITTING_DEFAULTS['preset']})")
    t.add_argument(
        "--data",
        help="phantom:N[:SEED] (rendered on the fly), a `whatif phantom generate` directory, mimic:ROOT, chexpert:ROOT "
        "or iu-xray:IMAGES (with --recipe: the recipe's unless given)",
    )
    t.add_argument("--out", required=True, help="run directory (checkpoint/, state/, metrics/, curves/)")
    t.add_argument(
        "--steps",
        type=int,
        default=argparse.SUPPRESS,
        help=f"the step the stage trains to (default {SITTING_DEFAULTS['steps']})",
    )
    t.add_argument(
        "--batch-size", type=int, default=argparse.SUPPRESS, help=f"default {SITTING_DEFAULTS['batch_size']}"
    )
    # The options as Hyper declares them; a flag not given is left out, so the field's default holds.
    for name, opt, default in Hyper.options():
        flag, stages = "--" + name.replace("_", "-"), ", ".join(opt.stages)
        if opt.choices:
            t.add_argument(
                flag, action="append", choices=opt.choices, default=argparse.SUPPRESS, help=f"{stages}: {opt.help}"
            )
        else:
            qualifies = f"; with --{opt.requires.replace('_', '-')}" if opt.requires else ""
            t.add_argument(
                flag,
                type=type(default),
                default=argparse.SUPPRESS,
                help=f"{stages}{qualifies}: {opt.help} (default {default:g})",
            )
    t.add_argument(
        "--seed", type=int, default=argparse.SUPPRESS, help=f"master seed (default {SITTING_DEFAULTS['seed']})"
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --out (a recipe continues by itself)")
    t.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present; under torchrun cuda:<LOCAL_RANK>), cpu, cuda or cuda:<index> (default auto)",
    )
    t.add_argument(
        "--precision",
        default="auto",
        help="the forward passes: auto (bf16 autocast on a GPU, fp32 on the CPU), fp32 or bf16 (default auto)",
    )
    t.set_defaults(func=_train)


def _train(args) -> int:
    from model.device import DeviceError
    from training.loop import TrainingError
    from training.options import Hyper
    from training.train import train, train_recipe
    from whatif.errors import UsageError

    options = {name: getattr(args, name) for name, _, _ in Hyper.options() if hasattr(args, name)}
    if args.recipe:
        given = (
            [k for k in (*SITTING_DEFAULTS, *options) if hasattr(args, k)]
            + (["stage"] if args.stage else [])
            + (["resume"] if args.resume else [])
        )
        if given:
            raise UsageError(
                "--recipe gives each sitting's stage, preset, steps, "
                f"batch size, seed and options; drop {', '.join(given)}"
            )
        try:
            done = train_recipe(args.recipe, args.out, args.data, args.device, args.precision)
        except (TrainingError, DeviceError) as exc:
            raise UsageError(str(exc)) from None
        print(
            f"{done['ran']} sittings run, {done['skipped']} done before, in "
            f"{done['seconds']:.0f} s; checkpoint in {args.out}/checkpoint"
        )
        return 0
    if not args.stage or not args.data:
        raise UsageError("name the stage to train and --data (or pass --recipe)")
    sitting = {k: getattr(args, k, v) for k, v in SITTING_DEFAULTS.items()}
    try:
        hp = Hyper.from_options(options)
        report = train(
            args.stage,
            sitting["preset"],
            args.data,
            args.out,
            sitting["steps"],
            sitting["batch_size"],
            args.resume,
            sitting["seed"],
            hp,
            device=args.device,
            precision=args.precision,
        )
    except (TrainingError, DeviceError) as exc:
        raise UsageError(str(exc)) from None
    print(f"done in {report['seconds']:.0f} s; checkpoint in {args.out}/checkpoint")
    return 0
