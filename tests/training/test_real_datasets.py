"""Readers of the real dataset layouts, on tiny fixture trees built here (no real data needed)."""

import gzip

import numpy as np
import pytest
from PIL import Image

from model.labels import CHEXPERT_LABELS
from training.datasets.real import chexpert, iu_xray, mimic_cxr_jpg, patient_split


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 48), value, np.uint8)).save(path)


def _csv(path, header, rows, gz=False):
    text = ",".join(header) + "\n" + "".join(",".join(str(r.get(h, "")) for h in header) + "\n" for r in rows)
    if gz:
        with gzip.open(str(path) + ".gz", "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def _patients(n, split):
    return [p for p in (f"{10000000 + i}" for i in range(400)) if patient_split(p) == split][:n]


def test_mimic_layout_views_uncertainty_reports(tmp_path):
    pts = _patients(2, "train") + _patients(1, "test")
    meta, lab = [], []
    for k, sid in enumerate(pts):
        study = f"5{k}000000"
        for view, dicom in (("PA", f"d{k}pa"), ("LATERAL", f"d{k}lat")):
            meta.append({"dicom_id": dicom, "subject_id": sid, "study_id": study, "ViewPosition": view})
            _img(tmp_path / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}" / f"{dicom}.jpg")
        lab.append({"subject_id": sid, "study_id": study, "Pleural Effusion": -1 if k == 0 else 1, "Edema": 1})
        rep = tmp_path / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}.txt"
        rep.write_text("FINDINGS: Small left pleural effusion. IMPRESSION: Mild pulmonary edema.")
    _csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta, gz=True
    )
    _csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], lab, gz=True)
    ds = mimic_cxr_jpg(tmp_path, 32)
    assert len(ds) == 2  # two train patients, PA only
    eff = CHEXPERT_LABELS.index("Pleural Effusion")
    assert sorted(float(ds[i]["labels"][eff]) for i in range(2)) == [0.0, 1.0]  # U-zeros
    assert np.array_equal(
        ds.label_matrix(), np.stack([ds[i]["labels"].numpy() for i in range(2)])
    )  # for repeat-factor sampling
    assert ds[0]["image"].shape == (1, 32, 32) and ds[0]["text"] == "mild edema; small left pleural effusion"
    assert len(mimic_cxr_jpg(tmp_path, 32, uncertainty="ignore")) == 1
    assert len(mimic_cxr_jpg(tmp_path, 32, split="test")) == 1
    assert len(mimic_cxr_jpg(tmp_path, 32, views=("PA", "AP", "LATERAL"))) == 4


def test_chexpert_layout(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for k, pid in enumerate(_patients(2, "train")):
        for view, fl in (("PA", "Frontal"), ("", "Lateral")):
            rel = f"CheXpert-v1.0-small/train/patient{pid}/study1/view_{fl}.jpg"
            _img(tmp_path / rel)
            rows.append(
                {
                    "Path": rel,
                    "Frontal/Lateral": fl,
                    "AP/PA": view,
                    "Cardiomegaly": 1 if k else 0,
                    "No Finding": "" if k else 1,
                }
            )
    root.mkdir(exist_ok=True)
    _csv(root / "train.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS], rows)
    ds = chexpert(root, 32)
    assert len(ds) == 2
    texts = sorted(ds[i]["text"] for i in range(2))
    assert texts == ["cardiomegaly", "no finding"]


def test_iu_xray_layout_with_shipped_reports(tmp_path):
    # The real report XMLs and view table ship in torchxrayvision; only the PNGs are fixtures.
    from training.iu_xray import read_reports

    ids = {1: "CXR1_1_IM-0001-3001", 2: "CXR2_1_IM-0652-1001"}
    for name in ids.values():
        _img(tmp_path / f"{name}.png")
    ds = iu_xray(tmp_path, 32, split=None, views=("PA", "AP", "LATERAL", ""))
    assert 1 <= len(ds) <= 2
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["labels"].shape == (14,)
    assert any(r.id == 1 for r in read_reports())


def test_empty_after_filters_is_an_error(tmp_path):
    _csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"], [])
    _csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id"], [])
    with pytest.raises(ValueError, match="no images left"):
        mimic_cxr_jpg(tmp_path, 32)
    with pytest.raises(FileNotFoundError):
        chexpert(tmp_path / "nothing", 32)


def test_identity_positive_is_the_same_patient_in_another_study(tmp_path):
    # E_ID on real data: MIMIC subject ids give the positive pair (stage 0's `other_view`).
    import torch

    sid = _patients(1, "train")[0]
    meta, lab = [], []
    for k, value in enumerate((60, 200)):
        study = f"5{k}000000"
        meta.append({"dicom_id": f"d{k}", "subject_id": sid, "study_id": study, "ViewPosition": "PA"})
        _img(tmp_path / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}" / f"d{k}.jpg", value)
        lab.append({"subject_id": sid, "study_id": study, "Edema": 1})
    _csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta)
    _csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], lab)
    ds = mimic_cxr_jpg(tmp_path, 16)
    assert len(ds) == 2
    assert torch.equal(ds.other_view(0), ds[1]["image"]) and torch.equal(ds.other_view(1), ds[0]["image"])
    # Stage 0 on this layout trains E_ID with that pair (a non-zero identity loss).
    import json

    from training.train import train

    train("stage0", "tiny", f"mimic:{tmp_path}", tmp_path / "run", steps=1, batch_size=2)
    row = json.loads((tmp_path / "run" / "metrics" / "stage0.jsonl").read_text().splitlines()[0])
    assert row["identity"] > 0
    single = mimic_cxr_jpg(tmp_path, 16)
    single.records, single._by_patient = single.records[:1], {str(sid): [0]}
    view = single.other_view(0)
    assert view.shape == (1, 16, 16) and not torch.equal(view, single[0]["image"])
