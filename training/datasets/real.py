"""Readers of the real datasets' on-disk layouts: MIMIC-CXR-JPG (+ report texts), CheXpert, IU-Xray (Open-i).

The layouts are the ones torchxrayvision's `MIMIC_Dataset`, `CheX_Dataset` and `Openi_Dataset`
read. Those classes are not used directly because they drop the report text (which stage 2
conditions on), remap labels away from CheXpert's 14 and turn uncertainty into NaN; these
readers keep all three, with the choices explicit:

- `views`: which projections to keep (default PA and AP; lateral views are never frontal).
- `uncertainty`: CheXpert's -1 as 0 ("zeros", default), as 1 ("ones"), or the study dropped ("ignore").
- `split`: "train" / "val" / "test" by a hash of the patient id (80/10/10): all studies of one
  patient fall in one split, so no patient is both trained on and evaluated.
Items have the form of `training.datasets` (image, labels, text, identity = patient).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.labels import CHEXPERT_LABELS, NO_FINDING

SPLITS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}


def patient_split(patient_id: str) -> str:
    bucket = int(hashlib.sha256(str(patient_id).encode()).hexdigest()[:8], 16) % 100
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists() and Path(str(path) + ".gz").exists():
        path = Path(str(path) + ".gz")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _label_value(text: str | None) -> float:
    if text in (None, ""):
        return float("nan")  # not mentioned
    return float(text)


class RealCXRDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        records: list[dict],
        size: int,
        views=("PA", "AP"),
        uncertainty: str = "zeros",
        split: str | None = "train",
    ):
        if uncertainty not in ("zeros", "ones", "ignore"):
            raise ValueError(f"uncertainty policy must be zeros, ones or ignore, got {uncertainty!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        views = {v.upper() for v in views}
        kept = []
        for r in records:
            if (r["view"] or "").upper() not in views:
                continue
            if split is not None and patient_split(r["patient"]) != split:
                continue
            labels = np.array(r["labels"], dtype=np.float32)
            if uncertainty == "ignore" and (labels == -1).any():
                continue
            labels[labels == -1] = 1.0 if uncertainty == "ones" else 0.0
            r = {**r, "labels": np.nan_to_num(labels, nan=0.0)}
            kept.append(r)
        if not kept:
            raise ValueError(f"no images left after the view ({', '.join(sorted(views))}) and split ({split}) filters")
        self.records, self.size = kept, size
        self._text: dict[int, str] = {}
        self._by_patient: dict[str, list[int]] = {}
        for i, r in enumerate(kept):
            self._by_patient.setdefault(str(r["patient"]), []).append(i)

    def __len__(self) -> int:
        return len(self.records)

    def label_matrix(self) -> np.ndarray:
        """(N, 14) labels after the uncertainty policy."""
        return np.stack([r["labels"] for r in self.records]).astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        from model.refine import condition_text, refine
        from model.refine.schema import StructuredFinding

        r = self.records[i]
        if i not in self._text:
            if r.get("report"):
                self._text[i] = refine(r["report"]).condition
            else:  # no report (CheXpert): the condition of the labels themselves
                present = [
                    StructuredFinding(label=lab, status="present")
                    for lab, v in zip(CHEXPERT_LABELS, r["labels"])
                    if v == 1 and lab != NO_FINDING
                ]
                self._text[i] = condition_text(present)
        return {
            "image": self._image(i),
            "labels": torch.from_numpy(r["labels"]),
            "text": self._text[i],
            "identity": int(hashlib.sha256(str(r["patient"]).encode()).hexdigest()[:12], 16),
        }

    def _image(self, i: int) -> torch.Tensor:
        img = Image.open(self.records[i]["path"]).convert("L").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img).astype(np.float32) / 127.5 - 1.0)[None]

    def other_view(self, i: int) -> torch.Tensor:
        """E_ID's positive: another frontal image of the same patient (MIMIC subject id, CheXpert
        patient), from another study when there is one (other findings, same person). A patient
        with one image gets that image shifted by a few pixels and re-windowed, so that the pair
        still teaches invariance to acquisition rather than nothing."""
        r = self.records[i]
        others = [j for j in self._by_patient[str(r["patient"])] if j != i]
        if others:
            other_study = [j for j in others if self.records[j].get("study") != r.get("study")] or others
            return self._image(other_study[i % len(other_study)])
        x = torch.roll(self._image(i), shifts=(3, -2), dims=(1, 2))
        return (x * 0.9 + 0.05).clamp(-1.0, 1.0)


def mimic_cxr_jpg(root: str | Path, size: int, reports_root: str | Path | None = None, **kw) -> RealCXRDataset:
    """MIMIC-CXR-JPG 2.0: `mimic-cxr-2.0.0-{metadata,chexpert}.csv(.gz)` and `files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`;
    report texts from MIMIC-CXR's `files/pXX/pSUBJECT/sSTUDY.txt` under `reports_root` (default: `root`)."""
    root = Path(root)
    reports_root = Path(reports_root) if reports_root else root
    labels = {(r["subject_id"], r["study_id"]): r for r in _read_csv(root / "mimic-cxr-2.0.0-chexpert.csv")}
    records = []
    for m in _read_csv(root / "mimic-cxr-2.0.0-metadata.csv"):
        sid, study = m["subject_id"], m["study_id"]
        lab = labels.get((sid, study))
        if lab is None:
            continue
        rel = Path("files") / f"p{sid[:2]}" / f"p{sid}" / f"s{study}"
        report = reports_root / rel.parent / f"s{study}.txt"
        records.append(
            {
                "path": root / rel / f"{m['dicom_id']}.jpg",
                "view": m.get("ViewPosition", ""),
                "patient": sid,
                "study": study,
                "labels": [_label_value(lab.get(name)) for name in CHEXPERT_LABELS],
                "report": report.read_text(errors="replace") if report.is_file() else "",
            }
        )
    return RealCXRDataset(records, size, **kw)


def chexpert(root: str | Path, size: int, csv_name: str = "train.csv", **kw) -> RealCXRDataset:
    """CheXpert-v1.0(-small): `train.csv` / `valid.csv` with `Path` relative to the folder above `root`."""
    root = Path(root)
    records = []
    for r in _read_csv(root / csv_name):
        rel = Path(r["Path"])
        path = root.parent / rel if rel.parts[0] == root.name else root / rel
        patient = next((p for p in rel.parts if p.startswith("patient")), str(rel))
        view = r.get("AP/PA") or ("LATERAL" if r.get("Frontal/Lateral") == "Lateral" else "")
        study = next((p for p in rel.parts if p.startswith("study")), "")
        records.append(
            {
                "path": path,
                "view": view,
                "patient": patient,
                "study": study,
                "labels": [_label_value(r.get(name)) for name in CHEXPERT_LABELS],
                "report": "",
            }
        )
    return RealCXRDataset(records, size, **kw)


def iu_xray(
    images: str | Path, size: int, reports: str | Path | None = None, dicom_csv: str | Path | None = None, **kw
) -> RealCXRDataset:
    """Open-i / IU-Xray: PNGs named `<parentImage id>.png`, the XML reports (default: the copy in
    torchxrayvision), views from the DICOM metadata table torchxrayvision ships; labels from the
    curated MeSH tags by `data/iu_xray_mesh_map.json`."""
    import tarfile
    import xml.etree.ElementTree as ET

    from training.phantom.lung_masks import data_path
    from training.refine_eval import load_mesh_map, tag_truth

    images = Path(images)
    mesh = load_mesh_map()
    views = {
        r["imageid"]: r.get("View Position", "")
        for r in _read_csv(Path(dicom_csv) if dicom_csv else data_path("nlmcxr_dicom_metadata.csv.gz"))
    }
    src = Path(reports) if reports else data_path("NLMCXR_reports.tgz")
    xmls: list[bytes] = []
    if src.is_dir():
        xmls = [p.read_bytes() for p in sorted(src.rglob("*.xml"))]
    else:
        with tarfile.open(src) as tar:
            xmls = [tar.extractfile(m).read() for m in tar if m.isfile() and m.name.endswith(".xml")]
    records = []
    for data in xmls:
        root = ET.parse(io.BytesIO(data)).getroot()
        uid = root.find("uId").get("id")
        major = tuple((e.text or "").strip() for e in root.iter("major"))
        truth = tag_truth(major, mesh)
        if truth is None:
            continue
        sections = {e.get("Label", ""): (e.text or "") for e in root.iter("AbstractText")}
        report = f"FINDINGS: {sections.get('FINDINGS', '')}\nIMPRESSION: {sections.get('IMPRESSION', '')}"
        labels = [1.0 if name in truth.labels else 0.0 for name in CHEXPERT_LABELS]
        for img in root.iter("parentImage"):
            path = images / f"{img.get('id')}.png"
            if path.is_file():
                records.append(
                    {
                        "path": path,
                        "view": views.get(img.get("id"), ""),
                        "patient": uid,
                        "labels": labels,
                        "report": report,
                    }
                )
    return RealCXRDataset(records, size, **kw)
