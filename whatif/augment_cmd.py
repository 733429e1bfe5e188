"""`whatif augment`: counterfactuals of a dataset's images with rare findings added, as a dataset."""

from __future__ import annotations

from whatif.errors import UsageError


def add_parser(sub) -> None:
    a = sub.add_parser(
        "augment",
        help="counterfactuals of a dataset's images with the given findings, as a dataset (long-tail augmentation)",
        description="Make counterfactuals of every image of --data with each of --targets and write them, with a "
        "manifest line each, as a dataset that `whatif train --data DIR` reads. Only results whose verdict passed are "
        "kept unless --keep-failed. A rerun of the same command continues where it stopped. The images are SYNTHETIC; "
        "the embedded default model is trained on phantoms: for demonstration and testing, not for clinical use.",
    )
    a.add_argument(
        "--data",
        required=True,
        help="phantom:N[:SEED] (rendered on the fly), a directory with a manifest.jsonl (`whatif phantom generate`, "
        "`whatif augment`), mimic:ROOT, chexpert:ROOT or iu-xray:IMAGES (their training split)",
    )
    a.add_argument("--targets", required=True, help="comma-separated requests, e.g. 'Pneumonia,Fracture,Lung Lesion'")
    a.add_argument("--per-image", type=int, default=1, metavar="K", help="counterfactuals per image and target")
    a.add_argument("--out", required=True, help="output directory (a rerun with the same settings continues it)")
    a.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    a.add_argument("--seed", type=int, default=0, help="the run's seed; each item's seed derives from it")
    a.add_argument("--no-optimize-seed", action="store_true", help="skip the long-tail seed optimisation")
    a.add_argument("--keep-failed", action="store_true", help="keep results whose verdict failed, marked as such")
    a.add_argument("--size", type=int, default=128, help="the size phantom:N images are rendered at")
    a.add_argument("--limit", type=int, metavar="N", help="only the dataset's first N images")
    where = a.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, help="processes on this machine, each with the model")
    where.add_argument(
        "--broker",
        metavar="URL",
        help="redis://...: send the items to the Celery workers of that broker instead (they must run the same "
        "checkpoint); results equal a local run's",
    )
    a.add_argument("--window", type=int, default=8, help="--broker: items in flight at most")
    a.add_argument(
        "--timeout", type=float, default=900.0, metavar="S", help="--broker: stop when no result comes for S seconds"
    )
    a.set_defaults(func=_augment)


def _augment(args) -> int:
    from training.longtail.broker import BrokerError
    from training.longtail.run import AugmentOptions, augment

    opts = AugmentOptions(
        data=args.data,
        targets=args.targets,
        out=args.out,
        per_image=args.per_image,
        checkpoint=args.checkpoint,
        seed=args.seed,
        optimize_seed=not args.no_optimize_seed,
        keep_failed=args.keep_failed,
        size=args.size,
        limit=args.limit,
        workers=args.workers,
        broker=args.broker,
        window=args.window,
        timeout_s=args.timeout,
    )
    try:
        summary = augment(opts)
    except (ValueError, BrokerError) as exc:  # SourceError, PlanError, OutputError, a bad count; the workers
        if type(exc).__module__.startswith(("training.longtail", "builtins")):
            raise UsageError(str(exc)) from None
        raise
    print("\n".join(summary.lines()))
    return 0
