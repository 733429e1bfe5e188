"""The images a `whatif augment` run starts from, whatever the dataset's layout.

Each source image is read as its file's bytes, so that the same bytes reach the model here and on
a worker (`model.batch_item`). Real layouts are read through the project's own readers
(`training.datasets.real`), their training split only: counterfactuals of validation or test
patients would leak them into training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from model.labels import CHEXPERT_LABELS

REAL_LAYOUTS = ("mimic", "chexpert", "iu-xray")
DEFAULT_PHANTOM_SIZE = 128


class SourceError(ValueError):
    """A dataset spec that names nothing usable: reported before any work."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    id: str  # unique in the dataset and safe in a file name
    origin: str  # where it came from: a path, or phantom:SEED:INDEX
    labels: dict[str, int]  # CheXpert label -> 1 present, 0 otherwise (uncertain counts as 0)
    report: str  # the source's report ("" when the layout has none)
    identity: int  # the phantom identity seed, or a number derived from the patient id
    read: Callable[[], bytes] = dataclasses.field(compare=False, repr=False)


def open_source(spec: str, size: int = DEFAULT_PHANTOM_SIZE) -> list[SourceImage]:
    """`phantom:N[:SEED]` (rendered at `size`), a directory with a `manifest.jsonl` (from `whatif
    phantom generate` or `whatif augment`), or `mimic:ROOT`, `chexpert:ROOT`, `iu-xray:IMAGES`."""
    kind, _, where = spec.partition(":")
    if kind in REAL_LAYOUTS:
        sources = _real(kind, where, spec)
    elif kind == "phantom":
        sources = _phantom(spec, size)
    else:
        sources = _directory(Path(spec), spec)
    if not sources:
        raise SourceError(f"--data {spec}: the dataset has no images")
    return sources


def dataset_id(spec: str) -> str:
    """What names a dataset in a run's settings: for a directory its manifest's SHA-256 (the same
    data wherever the directory lies), for a real layout its root resolved, else the spec."""
    kind, _, where = spec.partition(":")
    if kind in REAL_LAYOUTS:
        return f"{kind}:{Path(where).resolve()}"
    if kind == "phantom":
        return spec
    manifest = Path(spec) / "manifest.jsonl"
    return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def _phantom(spec: str, size: int) -> list[SourceImage]:
    from training.loop import TrainingError
    from training.phantom.cases import sample_case
    from training.phantom.renderer import check_size
    from training.train import phantom_spec

    try:
        n, seed = phantom_spec(spec)
    except TrainingError as exc:
        raise SourceError(str(exc)) from None
    try:
        check_size(size)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    out = []
    for i in range(n):
        case = sample_case(seed, i)
        out.append(
            SourceImage(
                id=case.id,
                origin=f"phantom:{seed}:{i}",
                labels={k: int(v) for k, v in case.labels.items()},
                report=case.report().text,
                identity=case.identity_seed,
                read=lambda case=case: case.render(size).png_bytes(),
            )
        )
    return out


def _directory(root: Path, spec: str) -> list[SourceImage]:
    import json

    manifest = root / "manifest.jsonl"
    if not root.is_dir():
        raise SourceError(
            f"--data {spec}: no such directory (use phantom:N[:SEED], a directory with a manifest.jsonl, "
            f"or {', '.join(k + ':ROOT' for k in REAL_LAYOUTS)})"
        )
    if not manifest.is_file():
        raise SourceError(f"--data {spec}: {root} has no manifest.jsonl (make one with `whatif phantom generate`)")
    out = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SourceError(f"--data {spec}: {manifest} line {number} is not JSON") from None
        if not row.get("path"):  # a `whatif augment` line whose result was not kept
            continue
        path = root / row["path"]
        out.append(
            SourceImage(
                id=_safe_id(str(row.get("id") or Path(row["path"]).stem)),
                origin=str(path),
                labels={label: int(row.get("labels", {}).get(label, 0) == 1) for label in CHEXPERT_LABELS},
                report=str(row.get("report", "")),
                identity=int(row.get("identity_seed", _number(str(path)))),
                read=path.read_bytes,
            )
        )
    return out


def _real(kind: str, where: str, spec: str) -> list[SourceImage]:
    from training.datasets import real

    readers = {"mimic": real.mimic_cxr_jpg, "chexpert": real.chexpert, "iu-xray": real.iu_xray}
    if not where or not Path(where).exists():
        raise SourceError(f"--data {spec}: {where or 'the root'} does not exist")
    try:
        dataset = readers[kind](where, DEFAULT_PHANTOM_SIZE, split="train")
    except (FileNotFoundError, ValueError) as exc:
        raise SourceError(f"--data {spec}: {exc}") from None
    out = []
    for r in dataset.records:
        path = Path(r["path"])
        out.append(
            SourceImage(
                id=_safe_id(f"{r['patient']}-{path.stem}"),
                origin=str(path),
                labels={label: int(v == 1) for label, v in zip(CHEXPERT_LABELS, r["labels"])},
                report=str(r.get("report") or ""),
                identity=_number(str(r["patient"])),
                read=path.read_bytes,
            )
        )
    return out


def _safe_id(text: str) -> str:
    """A file-name-safe id: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120] or "image"


def _number(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
