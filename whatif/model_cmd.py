"""`whatif generate` (one counterfactual, no server) and `whatif checkpoint init`."""

from __future__ import annotations

import json
from pathlib import Path

from whatif.errors import UsageError


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="make one counterfactual radiograph (no server needed)")
    g.add_argument("--image", required=True, help="input radiograph: PNG, JPEG or DICOM")
    g.add_argument("--target", required=True, help="the finding(s) wanted, e.g. 'moderate left pleural effusion'")
    g.add_argument(
        "--out",
        required=True,
        help="output PNG (marked as synthetic), at the input's size: 16-bit for a 16-bit PNG or DICOM input, "
        "else 8-bit; also writes the edit region as <out stem>.region.png",
    )
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
    region = g.add_mutually_exclusive_group()
    region.add_argument(
        "--mask",
        metavar="PNG",
        help="the edit region: a PNG of the input's size, nonzero inside; nothing outside it changes "
        "(default: the request's anatomy on this input, where the model changed it)",
    )
    region.add_argument(
        "--box", metavar="X0,Y0,X1,Y1", help="the edit region as a box in the input's pixels (X1, Y1 exclusive)"
    )
    g.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="N",
        help="sample N candidates (1-8) in one batch and return the best that passes its verdict",
    )
    g.add_argument("--report", help="write the quality report, verdict, candidates and timings here as JSON")
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
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from model.composite import cap_size
    from model.notice import SYNTHETIC_NOTICE
    from model.pipeline import CounterfactualPipeline, check_candidates
    from model.preprocess import load_image_file
    from model.regions import check_user_region, requested_side
    from model.synthetic_png import is_sixteen_bit, result_pixels, synthetic_png

    out = Path(args.out)
    if not out.parent.exists():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    if not Path(args.image).is_file():
        raise UsageError(f"--image {args.image}: no such file")
    try:
        check_candidates(args.candidates)
    except ValueError as exc:
        raise UsageError(f"--candidates: {exc}") from None
    if args.mask and not Path(args.mask).is_file():
        raise UsageError(f"--mask {args.mask}: no such file")
    loaded = load_image_file(args.image)
    shape = loaded.pixels.shape
    region = None
    if args.mask:
        region = _read_mask(args.mask)
    elif args.box:
        region = _box(args.box, shape)
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    try:  # the pipeline's own first step, before any work: out-of-range settings are the user's to fix
        pipe.check_inputs(steps=args.steps, guidance=args.guidance, start=args.start, detail=args.detail)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if region is not None:  # a RegionError (wrong size, empty, wrong side) is a usage error, before any work
        region = check_user_region(region, shape, requested_side(pipe.condition_for(args.target)[2]))
        region = cap_size(region.astype(np.float32)) > 0  # the pipeline reduces inputs above MAX_OUTPUT_SIDE
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
        region=region,
        candidates=args.candidates,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    verdict = result.verdict.to_dict()
    # At the input's size and depth; outside the region the input's own values, as read.
    data = Path(args.image).read_bytes()
    pixels = result_pixels(result, is_sixteen_bit(data, loaded.source_format))
    out.write_bytes(synthetic_png(pixels, result.condition, result.seed, verdict))
    region_path = out.with_name(out.stem + ".region.png")
    Image.fromarray(result.region_uint8(), mode="L").save(region_path)
    h, w = pixels.shape
    summary = {
        "out": str(out),
        "condition": result.condition,
        "seed": result.seed,
        "seed_optimized": result.seed_optimized,
        "verdict": verdict,
        "candidates": result.candidates,
        "chosen": result.chosen,
        "region": {
            "source": result.region_source,
            "path": str(region_path),
            "pixels": int(result.region.sum()),
        },
        "size": {"width": w, "height": h, "bits": pixels.dtype.itemsize * 8},
        "lp_history": result.lp_history,
        "timings_s": result.timings,
        "quality": {**result.quality.__dict__, "notes": loaded.notes + result.quality.notes},
        "notice": SYNTHETIC_NOTICE,
    }
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
    line = {k: summary[k] for k in ("out", "condition", "seed", "timings_s")}
    line["verdict"] = {"status": verdict["status"], "reason": verdict["reason"]}
    line["region_source"] = result.region_source
    print(json.dumps(line))
    return 0


def _read_mask(path: str):
    """--mask: a PNG's pixels (grey or RGB), checked by `model.regions.check_user_region`."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise UsageError(f"--mask {path}: not a PNG (got {img.format})")
            if img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA"):
                img = img.convert("RGB")
            return np.asarray(img)
    except UsageError:
        raise
    except Exception as exc:  # PIL raises many types for a corrupt file
        raise UsageError(f"--mask {path}: not a readable PNG ({type(exc).__name__})") from None


def _box(text: str, shape: tuple[int, int]):
    """--box x0,y0,x1,y1 (x1, y1 exclusive) -> bool (H, W)."""
    import numpy as np

    h, w = shape
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--box must be four whole numbers x0,y0,x1,y1, got {text!r}") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise UsageError(f"--box {text}: needs 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (the input is {w}x{h})")
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask
