"""`whatif phantom generate | render | sheet`: synthetic radiographs with known ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from whatif.errors import UsageError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _size(text: str) -> int:
    """An image side the renderer draws (`training.phantom.renderer.check_size`)."""
    from training.phantom.renderer import check_size

    try:
        return check_size(_positive_int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**32), got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("phantom", help="synthetic chest radiographs with ground-truth counterfactuals")
    psub = p.add_subparsers(dest="phantom_command", required=True, metavar="ACTION")

    g = psub.add_parser("generate", help="render a dataset: DIR/images/<id>.png and DIR/manifest.jsonl")
    g.add_argument("--n", type=_positive_int, required=True, help="number of images")
    g.add_argument("--size", type=_size, default=256, help="image side in pixels (default 256)")
    g.add_argument("--seed", type=_seed, default=0, help="master seed (default 0)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--workers", type=_positive_int, default=1, help="processes (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)

    r = psub.add_parser("render", help="render one image with the findings given (a ground-truth counterfactual)")
    r.add_argument("--identity-seed", type=_seed, required=True)
    r.add_argument("--render-seed", type=_seed, default=0)
    r.add_argument(
        "--findings",
        default="none",
        help='JSON list as in the manifest, e.g. \'[{"label": "Pleural Effusion", "location": "left", '
        '"severity": "moderate"}]\', or `none`; a missing location or severity is drawn from the render seed',
    )
    r.add_argument("--size", type=_size, default=256)
    r.add_argument("--out", required=True, help="output PNG")
    r.add_argument("--masks", help="also write the finding masks to this .npz (one bool array per label)")
    r.set_defaults(func=_render)

    s = psub.add_parser("sheet", help="contact sheet: 4 identities x (no finding + 6 findings), as the paper's Fig. 7")
    s.add_argument("--out", default="docs/phantom.png")
    s.add_argument("--size", type=_size, default=256)
    s.add_argument("--seed", type=_seed, default=7, help="first identity seed")
    s.set_defaults(func=_sheet)


def _generate(args) -> int:
    from training.phantom.generate import generate

    manifest = generate(args.n, args.size, args.seed, args.out, args.workers, progress=not args.quiet)
    print(f"wrote {args.n} images and {manifest}")
    return 0


def _writable_file(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name")
    if not out.parent.exists():
        raise UsageError(f"cannot write {path}: directory {out.parent} does not exist")
    return out


def _render(args) -> int:
    from training.phantom.findings import parse_findings
    from training.phantom.renderer import render

    findings = parse_findings(args.findings)
    out = _writable_file(args.out)
    result = render(args.identity_seed, findings, args.render_seed, args.size)
    out.write_bytes(result.png_bytes())
    if args.masks:
        import numpy as np

        np.savez_compressed(_writable_file(args.masks), **{k: v for k, v in result.masks.items()})
    print(json.dumps({"out": str(out), "findings": [f.to_json() for f in result.findings]}))
    return 0


def _sheet(args) -> int:
    from training.phantom.contact_sheet import contact_sheet

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(out, size=args.size, first_identity=args.seed)
    print(f"wrote {out}")
    return 0
