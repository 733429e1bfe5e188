"""`whatif generate` (one counterfactual, no server) and `whatif checkpoint init`."""

from __future__ import annotations

import json
from pathlib import Path

from whatif.errors import UsageError


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="make one counterfactual radiograph (no server needed)")
    g.add_argument("--image", required=True, help="input radiograph: PNG, JPEG or DICOM")
    g.add_argument("--target", required=True, help="the finding(s) wanted, e.g. 'moderate left pleural effusion'")
    g.add_argument("--out", required=True, help="output PNG (marked as synthetic)")
    g.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-optimize-seed", action="store_true", help="skip the long-tail seed optimisation")
    g.add_argument("--steps", type=int, help="DDIM steps (checkpoint default)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance (checkpoint default)")
    g.add_argument(
        "--start",
        choices=["inversion", "noise"],
        help="start sampling from the inversion of the input's pathology channel (keeps more of the "
        "patient) or from noise drawn from --seed (varies with the seed); checkpoint default",
    )
    g.add_argument(
        "--detail",
        type=float,
        metavar="TAU",
        help="restore the input's fine detail that the autoencoder loses, faded out where the change "
        "exceeds about this much on [-1, 1]; 0 gives the paper's decoded image (checkpoint default)",
    )
    g.add_argument("--report", help="write the quality report and timings here as JSON")
    g.set_defaults(func=_generate)

    c = sub.add_parser("checkpoint", help="checkpoint utilities")
    csub = c.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")
    i = csub.add_parser("init", help="write an untrained but complete and loadable checkpoint (tests, smoke runs)")
    i.add_argument("--preset", default="tiny", help="tiny | phantom-128 | paper-256")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_init)


def _init(args) -> int:
    from model.pipeline import CounterfactualPipeline
    from training.centroids import compute_centroids

    pipe = CounterfactualPipeline.from_preset(args.preset, seed=args.seed)
    pipe.centroids = compute_centroids(pipe, m=10)
    pipe.save_pretrained(args.out)
    print(f"wrote untrained {args.preset} checkpoint to {args.out}")
    return 0


def _generate(args) -> int:
    from PIL import Image, PngImagePlugin
    from tqdm import tqdm

    from model.notice import SYNTHETIC_NOTICE
    from model.pipeline import CounterfactualPipeline
    from model.preprocess import load_image_file

    out = Path(args.out)
    if not out.parent.exists():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    if not Path(args.image).is_file():
        raise UsageError(f"--image {args.image}: no such file")
    loaded = load_image_file(args.image)
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    try:  # the pipeline's own first step, before any work: out-of-range settings are the user's to fix
        pipe.check_inputs(steps=args.steps, guidance=args.guidance, start=args.start, detail=args.detail)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    bars: dict[str, tqdm] = {}

    def progress(stage, step, total, lp):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.n = step
        if lp is not None:
            bar.set_postfix(L_P=f"{lp:.4f}")
        bar.refresh()

    result = pipe(
        loaded.pixels,
        args.target,
        seed=args.seed,
        optimize_seed=not args.no_optimize_seed,
        steps=args.steps,
        guidance=args.guidance,
        start=args.start,
        detail=args.detail,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SYNTHETIC_NOTICE)
    info.add_text("Software", "whatif-cxr")
    info.add_text("whatif:condition", result.condition)
    info.add_text("whatif:seed", str(result.seed))
    Image.fromarray(result.to_uint8(), mode="L").save(out, pnginfo=info)
    summary = {
        "out": str(out),
        "condition": result.condition,
        "seed": result.seed,
        "seed_optimized": result.seed_optimized,
        "lp_history": result.lp_history,
        "timings_s": result.timings,
        "quality": {**result.quality.__dict__, "notes": loaded.notes + result.quality.notes},
        "notice": SYNTHETIC_NOTICE,
    }
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("out", "condition", "seed", "timings_s")}))
    return 0
