"""`whatif train`: the training stages, resumable, the same command under torchrun."""

from __future__ import annotations


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a stage (or all) on phantom or real data")
    t.add_argument("stage", choices=["stage0", "stage1", "stage2", "classifier", "all"])
    t.add_argument("--preset", default="phantom-128")
    t.add_argument("--data", required=True, help="phantom:N[:SEED] (rendered on the fly), a `whatif phantom generate` directory, mimic:ROOT, chexpert:ROOT or iu-xray:IMAGES")
    t.add_argument("--out", required=True, help="run directory (checkpoint/, state/, metrics/, curves/)")
    t.add_argument("--steps", type=int, default=1000, help="optimisation steps per stage")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--kl-weight", type=float, default=None, help="stage1's alpha on the per-element KL (default: the paper's 0.1)")
    t.add_argument("--paired-weight", type=float, default=0.0, help="stage1 on phantoms: weight of the paired true-counterfactual term (default 0: the paper's stage 1)")
    t.add_argument("--paired-focus", type=float, default=50.0, help="with --paired-weight: extra weight of the pixels where a pair differs (its findings; default 50)")
    t.add_argument("--acquisition-augment", type=float, default=0.8, help="classifier: probability of each of blur, noise and exposure per image (default 0.8; 0 = none)")
    t.add_argument("--freeze", action="append", default=[], choices=["contrastive", "identity", "classifier", "text", "image"], help="stage0: leave this network as it is (repeatable), e.g. to train E_CXR on without touching a classifier trained since; text: the contrastive model's text tower only, which stage 2 is conditioned on; image: E_CXR only, which stage 1, the reference centroids and seed optimisation read")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.set_defaults(func=_train)


def _train(args) -> int:
    from training.loop import TrainingError
    from training.stages import Hyper
    from training.train import train
    from whatif.errors import UsageError

    hp = Hyper(
        lr=args.lr, paired=args.paired_weight, paired_focus=args.paired_focus, acquisition_augment=args.acquisition_augment, freeze=tuple(args.freeze),
    )
    if args.kl_weight is not None:
        hp.alpha = args.kl_weight
    try:
        report = train(args.stage, args.preset, args.data, args.out, args.steps, args.batch_size, args.resume, args.seed, hp)
    except TrainingError as exc:
        raise UsageError(str(exc)) from None
    print(f"done in {report['seconds']:.0f} s; checkpoint in {args.out}/checkpoint")
    return 0
