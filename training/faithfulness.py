"""Edit faithfulness against the phantom's true counterfactuals (issue 26, item 6).

Where `training/evaluate.py` asks whether a counterfactual shows the target, this asks whether the
edit is the right edit: the right pixels changed, by about the right amount, on the right side,
and nothing else. On the evaluation identities (`identity_seed(k)`, render seed `render_seed(k)`,
k = 0..n-1; apart from validation's), per identity:

- "addition": each of the paper's Table 2 findings (moderate, side and zone from the render seed)
  added to the identity without findings; the truth is the identity rendered with it;
- "removal": the same finding removed ("no finding" asked of the identity rendered with it);
- "second": a finding added to an image that already shows another (does the first survive?);
- "null": the input's own findings asked for (and "no finding" of a normal image): a sham, the
  image should stay put;
- "add_then_remove": the addition's result asked for "no finding": compared with the original;
- "side": a one-sided finding asked for on the patient's right and on the left;
- "severity": mild and severe beside the addition's moderate, at the same side and zone;
- "robust": an addition on an input rendered at 256 or 512 pixels, JPEG-compressed (quality 75),
  with its intensities scaled by +/-20% or rotated by 5 degrees; the truth transformed the same way.

An edit is valid (`score_edit`) when the judge (the evaluation classifier) crosses 0.5 the right
way, most of the change lies in the true finding's region (its mask dilated 3 pixels) and the
result equals the input exactly outside the pipeline's edit region (`out.region`). The metric
functions take plain arrays in [0, 1]; `run_faithfulness` drives a pipeline through the protocol
(`plan`) and `faithfulness_lines` writes the report's tables.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from model.labels import CHEXPERT_LABELS, NO_FINDING, PAPER_TABLE2_LABELS
from training.evaluate import (
    TAIL,
    TARGETS,
    VALIDATION_OFFSET,
    against,
    auroc_summary,
    identity_seed,
    render_seed,
    target_aurocs,
)
from training.phantom.findings import LABEL_SPECS, Finding
from training.phantom.renderer import PhantomImage, render

THRESHOLD = 0.5  # the judge's decision threshold (the verdict's too)
TOL = 2 / 255  # a pixel has changed when |result - input| exceeds this (on [0, 1])
DILATE = 3  # pixels the true finding's mask is dilated by, at the protocol's resolution
OVERLAP_MIN = 0.5  # validity: at least this share of the change mass inside the true region
HALFWAY_FLOOR = -1.0  # per edit, the halfway score is clipped here so one wild edit cannot swamp a mean
SEVERITY = "moderate"
SEVERITIES = ("mild", "moderate", "severe")
KINDS = ("addition", "removal", "second", "null", "add_then_remove", "side", "severity", "robust")
SHAMS = ("null",)  # request kinds that ask for no change: controls, not edits
TRANSFORMS = ("256 px", "512 px", "jpeg 75", "exposure +20%", "exposure -20%", "rotation 5 deg")
# Findings the model can take from the request to their zone but not to their place in it: the
# phantom puts them at a random point (`lesions._point_in_zone`, a random rib crossing for a fracture).
RANDOM_POSITION = ("Lung Lesion", "Pneumonia", "Consolidation", "Fracture", "Lung Opacity")
# Findings that can be asked for on either side.
LATERAL = tuple(
    x for x in PAPER_TABLE2_LABELS if LABEL_SPECS[x].sides and {"right", "left"} <= set(LABEL_SPECS[x].sides)
)
# The issue's targets: (key of `summary`, target, at least?).
TARGET_VALID_ADD, TARGET_VALID_REMOVE, TARGET_VALID_FINDING = 0.90, 0.80, 0.70
TARGET_INSIDE, TARGET_HALFWAY, TARGET_SIDE, TARGET_SEVERITY = 0.80, 0.5, 0.98, 0.90
TARGET_NULL_GREY, TARGET_VERDICT = 1.0, 0.90
TARGET_AUROC, TARGET_GAP = 0.88, 0.05  # issue 26's, on these held-out cases


# --- metrics on arrays --------------------------------------------------------------------------


def change(inp: np.ndarray, result: np.ndarray, tol: float = TOL) -> np.ndarray:
    """|result - input| where it exceeds `tol`, else 0 (float64, the images' grid). Both in [0, 1]."""
    d = np.abs(np.asarray(result, np.float64) - np.asarray(inp, np.float64))
    d[d <= tol] = 0.0
    return d


def true_region(mask: np.ndarray, dilate: int = DILATE) -> np.ndarray:
    """The true finding's pixels dilated by `dilate` pixels (a 3 x 3 cross, `dilate` times)."""
    mask = np.asarray(mask, bool)
    return ndimage.binary_dilation(mask, iterations=dilate) if dilate > 0 and mask.any() else mask.copy()


def mass_share(d: np.ndarray, where: np.ndarray) -> float | None:
    """Share of the change mass `d` (`change`) inside `where`; None when nothing changed."""
    total = float(d.sum())
    return float(d[where].sum()) / total if total > 0 else None


def inside_share(inp: np.ndarray, result: np.ndarray, region: np.ndarray, tol: float = TOL) -> float:
    """Share of the change, weighted by its magnitude, inside `region` (the true region): sum of
    |change| inside / sum of |change|. An edit that changes nothing scores 0 (nothing of it is where
    the finding is)."""
    share = mass_share(change(inp, result, tol), np.asarray(region, bool))
    return 0.0 if share is None else share


def halfway(inp: np.ndarray, result: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float | None:
    """How far the result went from the input toward the truth inside `region`:
    1 - MAE(result, truth) / MAE(input, truth). 1: the truth; 0: the input (or as far off); below 0:
    further from the truth than the input was. None where the truth does not differ from the input
    there. Clipped below at `HALFWAY_FLOOR`."""
    region = np.asarray(region, bool)
    if not region.any():
        return None
    truth = np.asarray(truth, np.float64)[region]
    ref = float(np.abs(np.asarray(inp, np.float64)[region] - truth).mean())
    if ref == 0.0:
        return None
    got = float(np.abs(np.asarray(result, np.float64)[region] - truth).mean())
    return max(HALFWAY_FLOOR, 1.0 - got / ref)


def outside_identical(inp: np.ndarray, result: np.ndarray, region: np.ndarray) -> bool:
    """Whether `result` equals `inp` exactly (bit for bit) outside the edit `region`."""
    outside = ~np.asarray(region, bool)
    return bool(np.array_equal(np.asarray(result)[outside], np.asarray(inp)[outside]))


def changed_area(inp: np.ndarray, result: np.ndarray, tol: float = TOL) -> int:
    """Pixels whose value moved by more than `tol`."""
    return int(np.count_nonzero(np.abs(np.asarray(result, np.float64) - np.asarray(inp, np.float64)) > tol))


def midline(anatomy: dict[str, np.ndarray]) -> tuple[float, float]:
    """The body's midline as column = a * row + b: a least-squares line through the midpoints of
    the two lungs' inner edges, row by row (so a rotated patient gets a tilted midline). Without a
    row that shows both lungs, the image's centre column."""
    right, left = np.asarray(anatomy["right_lung"], bool), np.asarray(anatomy["left_lung"], bool)
    rows, mids = [], []
    for r in np.nonzero(right.any(axis=1) & left.any(axis=1))[0]:
        inner_right = np.nonzero(right[r])[0].max()  # the patient's right lung is on the viewer's left
        inner_left = np.nonzero(left[r])[0].min()
        rows.append(r)
        mids.append((inner_right + inner_left) / 2)
    if len(rows) < 2:
        return 0.0, (right.shape[1] - 1) / 2
    a, b = np.polyfit(np.asarray(rows, float), np.asarray(mids, float), 1)
    return float(a), float(b)


def side_mask(anatomy: dict[str, np.ndarray], side: str) -> np.ndarray:
    """The pixels on the patient's `side` ("right" or "left") of the midline (`midline`). The
    patient's right is the viewer's left: the columns left of the midline."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    shape = np.asarray(anatomy["right_lung"]).shape
    a, b = midline(anatomy)
    rows, cols = np.indices(shape)
    left_of_line = cols < a * rows + b
    return left_of_line if side == "right" else ~left_of_line


def side_share(inp: np.ndarray, result: np.ndarray, anatomy: dict[str, np.ndarray], side: str, tol=TOL):
    """Share of the change mass on the patient's `side` of the midline; None when nothing changed."""
    return mass_share(change(inp, result, tol), side_mask(anatomy, side))


ZONE_MARGIN = 1 / 12  # of the lung's height, added above and below a zone: the phantom's zone edges are soft


def zone_mask(anatomy: dict[str, np.ndarray], finding: Finding, dilate: int = DILATE) -> np.ndarray | None:
    """The lung zone a finding was asked for: its side's lung (both for "bilateral" or no side),
    cut to the zone's third of that lung's height (widened by `ZONE_MARGIN` above and below) when it
    has a zone, dilated like the true region. A fracture's zone is its side of the midline in those
    rows, since the ribs it breaks run past the lung's edge. None for the cardiac and mediastinal
    findings, which have no lung zone."""
    if finding.label in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
        return None
    sides = ["right", "left"] if finding.side in (None, "bilateral") else [finding.side]
    out = np.zeros_like(np.asarray(anatomy["right_lung"], bool))
    for side in sides:
        lung = np.asarray(anatomy[f"{side}_lung"], bool)
        area = side_mask(anatomy, side) if finding.label == "Fracture" else lung
        if finding.zone is not None and lung.any():
            rows = np.nonzero(lung.any(axis=1))[0]
            top, height = rows[0], rows[-1] - rows[0] + 1
            k = ("upper", "middle", "lower").index(finding.zone)
            lo = max(0, int(top + (k / 3 - ZONE_MARGIN) * height))
            hi = int(math.ceil(top + ((k + 1) / 3 + ZONE_MARGIN) * height))
            band = np.zeros(lung.shape[0], bool)
            band[lo:hi] = True
            area = area & band[:, None]
        out |= area
    return true_region(out, dilate)


def judge_crosses(p_in: float, p_out: float, direction: str, threshold: float = THRESHOLD) -> bool:
    """The judge's half of validity. "add": from below the threshold to at or above it (so it rose);
    "remove": from at or above it to below. A sham ("null") is judged as an addition of the label
    it names: an input that shows it already cannot be "added" to."""
    if direction in ("add", "null"):
        return p_in < threshold <= p_out
    if direction == "remove":
        return p_in >= threshold > p_out
    raise ValueError(f"direction must be 'add', 'remove' or 'null', got {direction!r}")


def severity_triple(areas: Sequence[float], true_areas: Sequence[float]) -> dict[str, bool]:
    """Changed areas of the mild, moderate and severe results against the truths': `ordered`
    (mild < moderate < severe) and `within_2` (each within a factor 2 of its truth's area)."""
    if len(areas) != 3 or len(true_areas) != 3:
        raise ValueError("a severity triple has three areas (mild, moderate, severe) and three true areas")
    ordered = areas[0] < areas[1] < areas[2]
    within = all(t > 0 and 0.5 <= a / t <= 2.0 for a, t in zip(areas, true_areas))
    return {"ordered": bool(ordered), "within_2": bool(within)}


def score_edit(
    inp: np.ndarray,
    result: np.ndarray,
    region: np.ndarray,
    p_in: float,
    p_out: float,
    direction: str,
    truth: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    anatomy: dict[str, np.ndarray] | None = None,
    finding: Finding | None = None,
    dilate: int = DILATE,
    tol: float = TOL,
) -> dict:
    """Everything the protocol measures on one edit, from arrays in [0, 1] (`inp`, `result`,
    `truth`: the input as the pipeline read it, its result, the true counterfactual), the edit
    `region` the pipeline used, the judge's probability of the edited label before and after, and
    the true finding's `mask` (None for a sham: no truth region). `anatomy` and `finding` (the
    finding as drawn, with its side and zone) add the side and lung-zone shares.

    Valid: the judge crosses the threshold the right way (`judge_crosses`), at least
    `OVERLAP_MIN` of the change mass lies in the true region, and nothing changed outside `region`.
    A sham is valid as an edit when the judge crosses; it should not be."""
    inp = np.asarray(inp, np.float32)
    result = np.asarray(result, np.float32)
    region = np.asarray(region, bool)
    d = change(inp, result, tol)
    rec = {
        "p_in": float(p_in),
        "p_out": float(p_out),
        "judge_ok": judge_crosses(p_in, p_out, direction),
        "outside_identical": outside_identical(inp, result, region),
        "mean_abs_change": float(np.abs(result.astype(np.float64) - inp).mean() * 255.0),  # grey levels
        "changed_area": changed_area(inp, result, tol),
        "region_share": float(region.mean()),
    }
    if mask is not None and truth is not None:
        true = true_region(mask, dilate)
        rec["inside_share"] = inside_share(inp, result, true, tol)
        rec["halfway"] = halfway(inp, result, np.asarray(truth, np.float32), true)
        rec["true_changed_area"] = changed_area(inp, truth, tol)
        rec["region_covers_truth"] = float(region[true].mean()) if true.any() else None
        rec["overlap_ok"] = rec["inside_share"] >= OVERLAP_MIN
        rec["valid"] = bool(rec["judge_ok"] and rec["overlap_ok"] and rec["outside_identical"])
    else:
        rec["valid"] = bool(rec["judge_ok"])
    if anatomy is not None and finding is not None:
        zone = zone_mask(anatomy, finding, dilate)
        rec["zone_share"] = None if zone is None else mass_share(d, zone)
        if "overlap_ok" in rec:  # validity with the lung zone in place of the true region (the caveat)
            in_zone = rec["overlap_ok"] if zone is None else (rec["zone_share"] or 0.0) >= OVERLAP_MIN
            rec["valid_zone"] = bool(rec["judge_ok"] and in_zone and rec["outside_identical"])
        if direction == "add" and finding.side in ("right", "left"):  # a left or right request
            rec["side_share"] = mass_share(d, side_mask(anatomy, finding.side))
    return rec


# --- the protocol -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One pipeline call of the protocol."""

    kind: str  # one of KINDS
    index: int  # the identity's place, 0..n-1
    finding: str  # the label edited (added, removed; for "null" the input's, or "No Finding")
    first: str | None = None  # "second": the finding the input already shows
    side: str | None = None  # "side": the side asked for, "right" or "left"
    severity: str = SEVERITY
    transform: str | None = None  # "robust": one of TRANSFORMS
    validation: bool = False  # the validation identities and render seeds (for choosing settings)

    @property
    def identity(self) -> int:
        return identity_seed(self.index, self.validation)

    @property
    def render_seed(self) -> int:
        return render_seed(self.index, self.validation)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Case:
    """A request with its images: the input (None for "add_then_remove": the addition's result is
    its input) and its ground truth."""

    request: Request
    image: np.ndarray | None  # uint8, the input
    truth: np.ndarray  # uint8, the true counterfactual (the input itself for a sham)
    mask: np.ndarray | None  # bool, the edited finding's pixels (None for a sham)
    anatomy: dict[str, np.ndarray]  # of the image without the edited finding
    text: str  # the request
    label: str  # the label the judge is read on
    direction: str  # "add", "remove" or "null"
    finding: Finding | None  # the edited finding as drawn (side, zone, severity)
    first_mask: np.ndarray | None = None  # "second": the first finding's pixels
    dilate: int = DILATE  # the true region's dilation at this case's size


def _rotating(k: int) -> dict:
    """Which findings identity k's smaller request kinds are about: a rotation through the
    findings so that, over the identities, each finding gets its turn at each kind."""
    t = PAPER_TABLE2_LABELS
    m = len(t)
    return {
        # the second finding is never the first: the offset 1 + k % (m - 1) is 1..m-1
        "second": [(t[(2 * k + j) % m], t[(2 * k + j + 1 + k % (m - 1)) % m]) for j in range(2)],
        "null": t[(k + 4) % m],
        "add_then_remove": t[(k + 7) % m],
        "side": LATERAL[k % len(LATERAL)],
        "severity": t[(k + 2) % m],
        "robust": [(t[(3 * k + j) % m], TRANSFORMS[(3 * k + j) % len(TRANSFORMS)]) for j in range(3)],
    }


def plan(n: int, kinds: Iterable[str] | None = None, validation: bool = False) -> list[Request]:
    """The protocol's pipeline calls for `n` identities, in the order they run: identity by
    identity; within one, additions first (the add-then-remove and severity requests reuse one).
    `kinds` (default all of `KINDS`) selects request kinds; additions that a chosen kind reuses are
    kept. `validation`: the validation identities and render seeds instead. Deterministic."""
    kinds = tuple(KINDS if kinds is None else kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown request kind(s) {unknown}; choose from {', '.join(KINDS)}")
    if not 1 <= n <= VALIDATION_OFFSET:
        raise ValueError(f"n must be between 1 and {VALIDATION_OFFSET}, got {n}")
    out: list[Request] = []
    for k in range(n):
        rot = _rotating(k)
        adds = set(PAPER_TABLE2_LABELS) if "addition" in kinds else set()
        adds |= {rot[kind] for kind in ("severity", "add_then_remove") if kind in kinds}
        out += [Request("addition", k, f) for f in PAPER_TABLE2_LABELS if f in adds]
        if "removal" in kinds:
            out += [Request("removal", k, f) for f in PAPER_TABLE2_LABELS]
        if "second" in kinds:
            out += [Request("second", k, b, first=a) for a, b in rot["second"]]
        if "null" in kinds:
            out += [Request("null", k, rot["null"]), Request("null", k, NO_FINDING)]
        if "add_then_remove" in kinds:
            out.append(Request("add_then_remove", k, rot["add_then_remove"]))
        if "side" in kinds:
            out += [Request("side", k, rot["side"], side=s) for s in ("right", "left")]
        if "severity" in kinds:
            out += [Request("severity", k, rot["severity"], severity=s) for s in ("mild", "severe")]
        if "robust" in kinds:
            out += [Request("robust", k, f, transform=t) for f, t in rot["robust"]]
    return [dataclasses.replace(r, validation=True) for r in out] if validation else out


def count_calls(n: int, kinds: Iterable[str] | None = None) -> int:
    """Pipeline calls the protocol makes for `n` identities (one per `Request`)."""
    return len(plan(n, kinds))


def finding_text(findings: Iterable[Finding]) -> str:
    """The request for an image with `findings`, as a user would type it ("no finding" for none)."""
    parts = [" ".join(w for w in (f.severity, f.location, f.label.lower()) if w) for f in findings]
    return "; ".join(parts) or "no finding"


def transform_image(image: np.ndarray, name: str, mask: bool = False) -> np.ndarray:
    """One of the pixel `TRANSFORMS` on a uint8 image (or, `mask=True`, what a bool mask follows of
    it: only the rotation moves masks). Sizes are rendered, not resampled: see `case_for`."""
    if name in ("256 px", "512 px"):
        return image
    if name == "rotation 5 deg":
        if mask:
            return ndimage.rotate(image.astype(np.uint8), 5.0, reshape=False, order=0, mode="constant") > 0
        rotated = ndimage.rotate(image.astype(np.float32), 5.0, reshape=False, order=1, mode="nearest")
        return np.clip(np.round(rotated), 0, 255).astype(np.uint8)
    if mask:
        return image
    if name == "jpeg 75":
        buf = io.BytesIO()
        Image.fromarray(image, mode="L").save(buf, format="JPEG", quality=75)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    if name in ("exposure +20%", "exposure -20%"):
        gain = 1.2 if name.endswith("+20%") else 0.8
        return np.clip(np.round(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")


def _moderate(label: str, severity: str = SEVERITY, location: str | None = None) -> Finding:
    return Finding(label, location=location, severity=severity)


def case_for(req: Request, res: int) -> Case:
    """The input, truth and masks of one request, rendered at `res` pixels (256 or 512 for those
    robust inputs). The identity is `identity_seed(index)`, rendered with `render_seed(index)`."""
    identity, seed = req.identity, req.render_seed
    size = {"256 px": 256, "512 px": 512}.get(req.transform or "", res)
    dilate = max(1, round(DILATE * size / res))

    def draw(*findings: Finding) -> PhantomImage:
        return render(identity, list(findings), seed, size)

    normal = draw()
    if req.kind in ("addition", "severity", "side", "robust", "add_then_remove"):
        location = req.side if req.kind == "side" else None
        true = draw(_moderate(req.finding, req.severity, location))
        f = true.findings[0]
        if req.kind == "add_then_remove":  # its input is the addition's result; its truth the original
            mask = true.masks[f.label]
            return Case(
                req, None, normal.image, mask, normal.anatomy, "no finding", f.label, "remove", f, dilate=dilate
            )
        image, truth, mask, anatomy = normal.image, true.image, true.masks[f.label], normal.anatomy
        if req.transform is not None:
            t = req.transform
            image, truth = transform_image(image, t), transform_image(truth, t)
            mask = transform_image(mask, t, mask=True)
            anatomy = {name: transform_image(m, t, mask=True) for name, m in anatomy.items()}
        return Case(req, image, truth, mask, anatomy, finding_text(true.findings), f.label, "add", f, dilate=dilate)
    if req.kind == "removal":
        src = draw(_moderate(req.finding))
        f = src.findings[0]
        mask = src.masks[f.label]
        return Case(
            req, src.image, normal.image, mask, normal.anatomy, "no finding", f.label, "remove", f, dilate=dilate
        )
    if req.kind == "second":
        src = draw(_moderate(req.first))
        true = draw(_moderate(req.first), _moderate(req.finding))
        f = next(x for x in true.findings if x.label == req.finding)
        return Case(
            req,
            src.image,
            true.image,
            true.masks[f.label],
            src.anatomy,
            finding_text(true.findings),
            f.label,
            "add",
            f,
            first_mask=src.masks[req.first],
        )
    if req.kind == "null":
        src = normal if req.finding == NO_FINDING else draw(_moderate(req.finding))
        f = src.findings[0] if src.findings else None
        return Case(req, src.image, src.image, None, src.anatomy, finding_text(src.findings), req.finding, "null", f)
    raise ValueError(f"unknown request kind {req.kind!r}")


PLACE_BLIND_SEED = 10**5  # render seeds of the place-blind reference: apart from evaluation's and validation's


def place_blind_share(req: Request, res: int) -> float:
    """The inside share a model would score that draws the addition's finding exactly as the
    phantom does, on the right side, zone and severity, but at a place of its own: the change of
    the same finding rendered with another render seed, inside this request's true region. The
    ceiling of the inside share for findings the phantom places at random (`RANDOM_POSITION`)."""
    case = case_for(req, res)
    identity, other = req.identity, PLACE_BLIND_SEED + req.render_seed
    f = Finding(case.finding.label, case.finding.location, case.finding.severity)
    normal, drawn = render(identity, [], other, res).image, render(identity, [f], other, res).image
    return inside_share(normal / 255.0, drawn / 255.0, true_region(case.mask, case.dilate))


def judge(pipe, image: np.ndarray) -> np.ndarray:
    """The evaluation classifier's probabilities (sigmoid, CheXpert order) for an image of any size,
    preprocessed to the checkpoint's grid as the pipeline preprocesses its input."""
    import torch

    from model.preprocess import to_model_input

    with torch.no_grad():
        return torch.sigmoid(pipe.eval_classifier(to_model_input(image, pipe.resolution)))[0].double().numpy()


def _clean(x):
    """JSON-able: numpy scalars to Python, NaN to None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def run_faithfulness(
    pipe,
    n: int,
    res: int = 128,
    optimize_seed: bool = False,
    progress: bool = True,
    subset: Iterable[str] | None = None,
    validation: bool = False,
    sheet: Iterable[tuple[int, str]] = (),
) -> dict:
    """Run the protocol (`plan(n, subset)`) through `pipe` on phantoms rendered at `res` pixels and
    score every call (`score_edit`). `subset`: request kinds (`KINDS`; default all). Each call uses
    the identity's render seed as its seed. `sheet`: (identity index, finding) additions whose images
    are kept for the contact sheet. Returns a dict, JSON-able but for `images`: the settings, `calls`,
    `seconds`, one record per call (`edits`) and `summary` (`summarize`)."""
    requests = plan(n, subset, validation)
    wanted = set(sheet)
    images: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # additions kept for the contact sheet
    kinds = tuple(KINDS if subset is None else subset)
    edits: list[dict] = []
    results: dict[tuple[int, str], np.ndarray] = {}  # additions' results that add-then-remove reuses
    needed = {(r.index, r.finding) for r in requests if r.kind == "add_then_remove"}
    start = time.perf_counter()
    bar = tqdm(total=len(requests), desc="faithfulness", unit="call", disable=not progress)
    for req in requests:
        case = case_for(req, res)
        image = results.pop((req.index, req.finding)) if req.kind == "add_then_remove" else case.image
        out = pipe(image, case.text, seed=req.render_seed, optimize_seed=optimize_seed)
        if (req.index, req.finding) in needed and req.kind == "addition":
            results[(req.index, req.finding)] = out.image
        probs_in, probs_out = judge(pipe, out.input_image), judge(pipe, out.image)
        li = CHEXPERT_LABELS.index(case.label)
        rec = score_edit(
            out.input_image,
            out.image,
            out.region,
            probs_in[li],
            probs_out[li],
            case.direction,
            truth=case.truth.astype(np.float32) / 255.0,
            mask=case.mask,
            anatomy=case.anatomy,
            finding=case.finding,
            dilate=case.dilate,
        )
        rec.update(
            request=req.to_dict(),
            text=case.text,
            location=case.finding.location if case.finding else None,
            verdict_passed=bool(out.verdict.passed),
            verdict_status=out.verdict.status,
        )
        if req.kind in ("addition", "removal"):  # the AUROC reads every label
            rec["probs_out"] = probs_out.tolist()
            if req.kind == "addition":
                rec["place_blind_inside"] = place_blind_share(req, res)
            rec["probs_truth"] = judge(pipe, case.truth).tolist()
            # the judge on the true counterfactual itself: the ceiling of validity for this edit
            rec["truth_judge_ok"] = judge_crosses(probs_in[li], rec["probs_truth"][li], case.direction)
        if req.kind == "second":  # does the first finding survive the second's addition?
            fi = CHEXPERT_LABELS.index(req.first)
            keep = ~true_region(case.mask, case.dilate) & case.first_mask
            truth = case.truth.astype(np.float32) / 255.0
            rec["first_p_in"], rec["first_p_out"] = float(probs_in[fi]), float(probs_out[fi])
            rec["first_survives"] = bool(probs_out[fi] >= THRESHOLD)
            rec["first_mae"] = float(np.abs(out.image[keep] - truth[keep]).mean() * 255.0) if keep.any() else None
        if req.kind == "add_then_remove":  # back where it started?
            original = case.truth.astype(np.float32) / 255.0
            rec["returned_mae"] = float(np.abs(out.image - original).mean() * 255.0)
            rec["added_mae"] = float(np.abs(out.input_image - original).mean() * 255.0)
        edits.append(_clean(rec))
        if req.kind == "addition" and (req.index, req.finding) in wanted:
            images[(req.index, req.finding)] = {
                "input": out.input_image,
                "result": out.image,
                "region": out.region,
                "truth": case.truth.astype(np.float32) / 255.0,
            }
        bar.update(1)
        bar.set_postfix(valid=f"{np.mean([e['valid'] for e in edits if e['request']['kind'] not in SHAMS] or [0]):.2f}")
    bar.close()
    return {
        "n": n,
        "res": res,
        "resolution": int(pipe.resolution),
        "optimize_seed": bool(optimize_seed),
        "validation": bool(validation),
        "kinds": list(kinds),
        "calls": len(requests),
        "seconds": time.perf_counter() - start,
        "edits": edits,
        "summary": summarize(edits),
        "images": images,  # not JSON: the contact sheet's additions, (index, finding) -> arrays
    }


# --- the summary --------------------------------------------------------------------------------


def _mean(values) -> float | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(xs)) if xs else None


def _share(flags) -> float | None:
    xs = [bool(v) for v in flags if v is not None]
    return float(np.mean(xs)) if xs else None


def _kind(e: dict) -> str:
    return e["request"]["kind"]


def _by_finding(edits: list[dict], key) -> dict[str, float | None]:
    return {f: key([e for e in edits if e["request"]["finding"] == f]) for f in PAPER_TABLE2_LABELS}


def severity_triples(edits: list[dict]) -> list[dict]:
    """Per identity with severity requests: the mild, moderate (the addition) and severe results'
    changed areas against the truths' (`severity_triple`)."""
    by: dict[tuple[int, str], dict[str, dict]] = {}
    for e in edits:
        r = e["request"]
        if _kind(e) == "severity" or (_kind(e) == "addition" and r["severity"] == SEVERITY):
            by.setdefault((r["index"], r["finding"]), {})[r["severity"]] = e
    out = []
    for (k, f), row in sorted(by.items()):
        if set(row) != set(SEVERITIES):
            continue
        areas = [row[s]["changed_area"] for s in SEVERITIES]
        truths = [row[s]["true_changed_area"] for s in SEVERITIES]
        out.append({"index": k, "finding": f, "areas": areas, "true_areas": truths, **severity_triple(areas, truths)})
    return out


def _aurocs(edits: list[dict]) -> dict | None:
    """The evaluation's AUROCs on these cases: each Table-2 target from its additions, "No Finding"
    from the removal of finding (render seed mod 11) as `training/evaluate.py` sets it up."""
    probs: dict[str, list] = {}
    truth: dict[str, list] = {}
    m = len(PAPER_TABLE2_LABELS)
    for e in edits:
        r = e["request"]
        if _kind(e) == "addition" and "probs_out" in e:
            target = r["finding"]
        elif _kind(e) == "removal" and r["finding"] == TARGETS[render_seed(r["index"], r.get("validation", False)) % m]:
            target = NO_FINDING
        else:
            continue
        probs.setdefault(target, []).append(np.asarray(e["probs_out"]))
        truth.setdefault(target, []).append(np.asarray(e["probs_truth"]))
    if len(probs) < 2:
        return None

    def summary(a: dict[str, float]) -> dict:
        full = {t: a.get(t, float("nan")) for t in TARGETS}
        s = auroc_summary(full)
        return {"per_target": full, **s, "gap": s["head_auroc"] - s["tail_auroc"]}

    return {"model": summary(target_aurocs(probs)), "true": summary(target_aurocs(truth))}


def summarize(edits: list[dict]) -> dict:
    """The protocol's numbers from the per-call records of `run_faithfulness`: overall, per request
    kind, per finding and per robust transform, the severity triples, the shams and the AUROCs."""
    real = [e for e in edits if _kind(e) not in SHAMS]
    shams = [e for e in edits if _kind(e) in SHAMS]
    adds = [e for e in real if _kind(e) == "addition"]
    removes = [e for e in real if _kind(e) == "removal"]
    core = adds + removes
    triples = severity_triples(edits)

    def valid(es):
        return _share(e["valid"] for e in es)

    def inside(es):
        return _mean(e.get("inside_share") for e in es)

    def half(es):
        return _mean(e.get("halfway") for e in es)

    def zone(es):
        return _mean(e.get("zone_share") for e in es)

    def side(es):  # a one-sided request whose result changed nothing has no mass on the right side
        return _share((e["side_share"] or 0.0) > 0.5 for e in es if "side_share" in e)

    def verdict(es):
        return _share(e["verdict_passed"] == e["valid"] for e in es)

    def positive_input(es):  # the judge already reads the target on an addition's input
        return _share(e["p_in"] >= THRESHOLD for e in es)

    per_finding = {}
    for f in PAPER_TABLE2_LABELS:
        mine = [e for e in real if e["request"]["finding"] == f]
        tri = [t for t in triples if t["finding"] == f]
        per_finding[f] = {
            "valid": valid([e for e in core if e["request"]["finding"] == f]),
            "valid_addition": valid([e for e in adds if e["request"]["finding"] == f]),
            "valid_removal": valid([e for e in removes if e["request"]["finding"] == f]),
            "valid_zone": _share(e.get("valid_zone") for e in core if e["request"]["finding"] == f),
            "inside_share": inside(mine),
            "halfway": half(mine),
            "zone_share": zone(mine),
            "place_blind_inside": _mean(e.get("place_blind_inside") for e in mine),
            "side": side(mine),
            "severity": _share(t["ordered"] and t["within_2"] for t in tri),
            "verdict_agrees": verdict(mine),
            "input_positive": positive_input([e for e in adds if e["request"]["finding"] == f]),
            "truth_judged": _share(e.get("truth_judge_ok") for e in core if e["request"]["finding"] == f),
            "edits": len(mine),
        }
    by_kind = {
        kind: {
            "calls": len(es),
            "valid": valid(es),
            "inside_share": inside(es),
            "halfway": half(es),
            "outside_identical": _share(e["outside_identical"] for e in es),
            "verdict_agrees": verdict(es),
        }
        for kind in KINDS
        if (es := [e for e in edits if _kind(e) == kind])
    }
    robust = {
        t: {"calls": len(es), "valid": valid(es), "inside_share": inside(es), "halfway": half(es)}
        for t in TRANSFORMS
        if (es := [e for e in real if e["request"]["transform"] == t])
    }
    second = [e for e in real if _kind(e) == "second"]
    atr = [e for e in real if _kind(e) == "add_then_remove"]
    return _clean(
        {
            "edits": len(real),
            "valid": valid(real),
            "valid_addition": valid(adds),
            "valid_removal": valid(removes),
            "valid_zone": _share(e.get("valid_zone") for e in real),
            "truth_judged_addition": _share(e.get("truth_judge_ok") for e in adds),
            "truth_judged_removal": _share(e.get("truth_judge_ok") for e in removes),
            "inside_share": inside(real),
            "halfway": half(real),
            "zone_share": zone(real),
            "place_blind_inside": _mean(e.get("place_blind_inside") for e in real),
            "side": side(real),
            "side_requests": sum(1 for e in real if "side_share" in e),
            "severity": _share(t["ordered"] and t["within_2"] for t in triples),
            "severity_ordered": _share(t["ordered"] for t in triples),
            "severity_triples": len(triples),
            "verdict_agrees": verdict(real),
            "outside_identical": _share(e["outside_identical"] for e in edits),
            "region_share": _mean(e["region_share"] for e in edits),
            "region_covers_truth": _mean(e.get("region_covers_truth") for e in real),
            "null": {
                "calls": len(shams),
                "mean_abs_change": _mean(e["mean_abs_change"] for e in shams),
                "outside_identical": _share(e["outside_identical"] for e in shams),
                "judged_valid": _share(e["valid"] for e in shams),
                "verdict_passed": _share(e["verdict_passed"] for e in shams),
            },
            "second": {
                "calls": len(second),
                "first_survives": _share(e["first_survives"] for e in second if e["first_p_in"] >= THRESHOLD),
                "first_seen_on_input": _share(e["first_p_in"] >= THRESHOLD for e in second),
                "first_mae": _mean(e.get("first_mae") for e in second),
            },
            "add_then_remove": {
                "calls": len(atr),
                "returned_mae": _mean(e["returned_mae"] for e in atr),
                "added_mae": _mean(e["added_mae"] for e in atr),
            },
            "by_kind": by_kind,
            "robust": robust,
            "per_finding": per_finding,
            "auroc": _aurocs(edits),
        }
    )


# --- the report ---------------------------------------------------------------------------------


def _f(x, places: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{places}f}"


def _judged(x, target: float, at_least: bool = True) -> str:
    return "n/a" if x is None else against(x, target, at_least)


def _worst(per_finding: dict, key: str, at_least: bool = True) -> str:
    """The finding furthest from the target on `key`, with its value."""
    vals = {f: r[key] for f, r in per_finding.items() if r[key] is not None}
    if not vals:
        return "n/a"
    f = (min if at_least else max)(vals, key=vals.__getitem__)
    return f"{f} {vals[f]:.2f}"


def headline(result: dict) -> str:
    """One sentence of the main numbers (the model card's line)."""
    s = result["summary"]
    return (
        f"valid edits {_f(s['valid'], 3)} (additions {_f(s['valid_addition'])}, removals {_f(s['valid_removal'])}); "
        f"change inside the true region {_f(s['inside_share'])}; halfway to the truth {_f(s['halfway'])}; "
        f"requested side {_f(s['side'])}; null request {_f(s['null']['mean_abs_change'])} grey levels; "
        f"verdict agrees with validity {_f(s['verdict_agrees'])}."
    )


def faithfulness_lines(result: dict) -> list[str]:
    """The report's markdown: the headline, the targets (overall, measured against the issue's
    target, and the worst finding), one row per finding, the request kinds, the robust inputs,
    the shams, and the caveat on findings placed at random."""
    s = result["summary"]
    pf = s["per_finding"]
    lines = [
        f"**Valid edits: {_f(s['valid'], 3)}** of {s['edits']} edits ({result['calls']} pipeline calls on "
        f"{result['n']} held-out identities at {result['res']} px, seed optimisation "
        f"{'on' if result['optimize_seed'] else 'off'}, {result['seconds'] / 60:.1f} min). With the requested lung "
        f"zone in place of the true region (see the caveat below): {_f(s['valid_zone'], 3)}. The judge itself "
        f"passes the true counterfactuals of {_f(s['truth_judged_addition'])} of the additions and "
        f"{_f(s['truth_judged_removal'])} of the removals: no edit can do better (column truth judged).",
        "",
        "| target | overall | worst finding |",
        "| --- | --- | --- |",
        f"| valid additions | {_judged(s['valid_addition'], TARGET_VALID_ADD)} | {_worst(pf, 'valid_addition')} |",
        f"| valid removals | {_judged(s['valid_removal'], TARGET_VALID_REMOVE)} | {_worst(pf, 'valid_removal')} |",
    ]
    worst_valid = min((r["valid"] for r in pf.values() if r["valid"] is not None), default=None)
    lines += [
        f"| every Table-2 finding valid | {_judged(worst_valid, TARGET_VALID_FINDING)} | {_worst(pf, 'valid')} |",
        f"| change inside the true region | {_judged(s['inside_share'], TARGET_INSIDE)} | "
        f"{_worst(pf, 'inside_share')} |",
        f"| halfway to the truth inside it | {_judged(s['halfway'], TARGET_HALFWAY)} | {_worst(pf, 'halfway')} |",
        f"| most change on the requested side ({s['side_requests']} requests) | "
        f"{_judged(s['side'], TARGET_SIDE)} | {_worst(pf, 'side')} |",
        f"| severity ordered, each within x2 of the truth ({s['severity_triples']} triples) | "
        f"{_judged(s['severity'], TARGET_SEVERITY)} | {_worst(pf, 'severity')} |",
        f"| null request: mean absolute change (grey levels) | "
        f"{_judged(s['null']['mean_abs_change'], TARGET_NULL_GREY, at_least=False)} | |",
        f"| null request: bit-identical outside the region | {_judged(s['null']['outside_identical'], 1.0)} | |",
        f"| verdict agrees with validity | {_judged(s['verdict_agrees'], TARGET_VERDICT)} | "
        f"{_worst(pf, 'verdict_agrees')} |",
    ]
    a = s["auroc"]
    if a:
        m = a["model"]
        lines += [
            f"| mean target AUROC (evaluation's target) | {_judged(m['mean_auroc'], TARGET_AUROC)} | |",
            f"| head - tail AUROC gap (evaluation's target) | {_judged(m['gap'], TARGET_GAP, at_least=False)} | |",
        ]
    lines += [
        "",
        "Per finding (additions and removals for the validity columns; every edit of the finding for the others). "
        "Valid (zone): validity with the requested lung zone in place of the true region. "
        "Zone: the change's share inside the requested lung zone. Blind: the inside share of the finding drawn "
        "by the phantom itself at another place in the same zone, the ceiling where the place is random (*). "
        "Input positive: additions whose input the judge already reads as showing the target (they cannot be valid). "
        "Truth judged: additions and removals whose true counterfactual the judge itself passes.",
        "",
        "| finding | valid | valid add. | valid rem. | valid (zone) | truth judged | inside | blind | halfway | zone "
        "| side | severity | verdict agrees | input positive | AUROC | edits |",
        "| --- |" + " ---: |" * 15,
    ]
    for f, r in pf.items():
        name = f + (" (tail)" if f in TAIL else "") + (" *" if f in RANDOM_POSITION else "")
        auc = a["model"]["per_target"].get(f) if a else None
        lines.append(
            f"| {name} | {_f(r['valid'])} | {_f(r['valid_addition'])} | {_f(r['valid_removal'])} | "
            f"{_f(r['valid_zone'])} | {_f(r['truth_judged'])} | "
            f"{_f(r['inside_share'])} | {_f(r['place_blind_inside'])} | {_f(r['halfway'])} | {_f(r['zone_share'])} | "
            f"{_f(r['side'])} | "
            f"{_f(r['severity'])} | {_f(r['verdict_agrees'])} | {_f(r['input_positive'])} | {_f(auc, 3)} | "
            f"{r['edits']} |"
        )
    lines += [
        "",
        "| request kind | calls | valid | inside | halfway | bit-identical outside | verdict agrees |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in s["by_kind"].items():
        valid = "(sham)" if kind in SHAMS else _f(r["valid"])
        lines.append(
            f"| {kind} | {r['calls']} | {valid} | {_f(r['inside_share'])} | {_f(r['halfway'])} | "
            f"{_f(r['outside_identical'])} | {_f(r['verdict_agrees'])} |"
        )
    if s["robust"]:
        lines += ["", "| robust input | calls | valid | inside | halfway |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [
            f"| {t} | {r['calls']} | {_f(r['valid'])} | {_f(r['inside_share'])} | {_f(r['halfway'])} |"
            for t, r in s["robust"].items()
        ]
    n, sec, atr = s["null"], s["second"], s["add_then_remove"]
    if n["calls"]:
        lines += [
            "",
            f'Shams ({n["calls"]} null requests: the input\'s own findings, or "no finding" of a normal image): '
            f"mean absolute change {_f(n['mean_abs_change'])} grey levels, bit-identical outside the region in "
            f"{_f(n['outside_identical'])}, judged a valid edit in {_f(n['judged_valid'])} (should be 0), "
            f"passed by the verdict in {_f(n['verdict_passed'])}.",
        ]
    if sec["calls"]:
        lines += [
            "",
            f"Second finding ({sec['calls']} requests): the first finding, where the judge saw it on the input "
            f"({_f(sec['first_seen_on_input'])} of them), is still seen in {_f(sec['first_survives'])}; mean "
            f"absolute error to the truth on its pixels {_f(sec['first_mae'], 1)} grey levels.",
        ]
    if atr["calls"]:
        lines += [
            "",
            f"Add then remove ({atr['calls']} requests): mean absolute difference from the original "
            f"{_f(atr['returned_mae'], 2)} grey levels after the removal, "
            f"{_f(atr['added_mae'], 2)} after the addition.",
        ]
    if a:
        t = a["true"]
        lines += [
            "",
            f"AUROC on these cases: mean {_f(a['model']['mean_auroc'], 3)}, tail {_f(a['model']['tail_auroc'], 3)} vs "
            f"head {_f(a['model']['head_auroc'], 3)}; the judge on the true counterfactuals: mean "
            f"{_f(t['mean_auroc'], 3)}, tail {_f(t['tail_auroc'], 3)} vs head {_f(t['head_auroc'], 3)}.",
        ]
    lines += [
        "",
        f"Edit regions cover {_f(s['region_share'])} of the image on average and "
        f"{_f(s['region_covers_truth'])} of the true region.",
        "",
        "Caveat: the phantom puts a lung lesion, pneumonia's patches, a consolidation, a lung opacity's centres "
        "and a rib fracture at a random place inside the requested zone (*); no model can know which. Their "
        "inside share and halfway score measure that guess as well as the edit; the zone column (the change's "
        "share inside the requested lung zone) tells a wrong place in the right zone from a wrong zone.",
    ]
    return lines
