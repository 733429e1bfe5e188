"""IU-Xray reading, the MeSH mapping, and the evaluation on a fixture in the real XML format."""

import json

import pytest

from training.iu_xray import parse_report, read_reports
from training.refine_eval import evaluate, load_mesh_map, tag_truth
from whatif.cli import main

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><IUXRId id="{id}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Cough.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{tags}</MeSH></eCitation>"""


def _write(tmp_path, id, findings, impression, tags):
    xml = XML.format(id=id, findings=findings, impression=impression, tags="".join(f"<major>{t}</major>" for t in tags))
    (tmp_path / f"{id}.xml").write_text(xml)


def test_mesh_mapping():
    mesh = load_mesh_map()
    t = tag_truth(("Costophrenic Angle/left/blunted", "Cardiomegaly/mild", "Calcified Granuloma/lung/base/right"), mesh)
    assert t.labels == {"Pleural Effusion", "Cardiomegaly"}
    assert t.side == {"Pleural Effusion": "left"} and t.severity == {"Cardiomegaly": 1}
    t = tag_truth(("Opacity/lung/base/left", "Opacity/lung/base/right", "Opacity/lung/round"), mesh)
    assert t.side["Lung Opacity"] == "bilateral" and "Lung Lesion" in t.labels
    assert tag_truth(("No Indexing",), mesh) is None


def test_evaluation_on_fixture_tree(tmp_path):
    _write(
        tmp_path, 5, "Small left pleural effusion. No pneumothorax.", "Left effusion.", ["Pleural Effusion/left/small"]
    )
    _write(tmp_path, 10, "Heart is normal. Lungs are clear.", "Normal chest.", ["normal"])
    _write(
        tmp_path,
        15,
        "Mild cardiomegaly.",
        "Cardiomegaly.",
        ["Cardiomegaly/moderate", "Pulmonary Atelectasis/base/right"],
    )
    _write(tmp_path, 7, "Large right pneumothorax.", "", ["Pneumothorax/right/large"])
    reports = list(read_reports(tmp_path))
    assert [r.id for r in reports] == [5, 7, 10, 15] and [r.fold for r in reports] == [
        "heldout",
        "dev",
        "heldout",
        "heldout",
    ]
    res = evaluate("heldout", reports=reports)
    assert res["reports"] == 3
    pl = res["per_label"]
    assert pl["Pleural Effusion"]["f1"] == 1.0
    assert pl["Atelectasis"]["recall"] == 0.0 and pl["Cardiomegaly"]["precision"] == 1.0
    assert res["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # tp 2, fn 1 (atelectasis)
    assert res["side_accuracy"] == 1.0 and res["side_n"] == 1
    assert res["severity_accuracy"] == 0.5 and res["severity_n"] == 2  # small == 1 right, mild != moderate
    dev = evaluate("dev", reports=reports)
    assert dev["reports"] == 1 and dev["side_accuracy"] == 1.0 and dev["severity_accuracy"] == 1.0


def test_real_reports_ship_with_torchxrayvision():
    reports = list(read_reports())
    assert len(reports) == 3955 and len({r.id for r in reports}) == 3955
    assert sum(r.fold == "heldout" for r in reports) == sum(r.id % 5 == 0 for r in reports)


def test_parse_rejects_other_xml():
    with pytest.raises(ValueError, match="IUXRId"):
        parse_report(b"<a/>")


def test_refine_batch_keeps_ids(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(json.dumps({"id": i, "text": t}) for i, t in [("a", "Small left effusion."), (7, "Normal chest.")])
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["refine", "--batch", str(src), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 7]
    assert rows[0]["condition"] == "small left pleural effusion" and rows[1]["condition"] == "no finding"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no id"}\n')
    with pytest.raises(SystemExit) as exc:
        main(["refine", "--batch", str(bad)])
    assert exc.value.code == 2 and "bad.jsonl:1" in capsys.readouterr().err
