"""`whatif augment` on this machine: the plan, the manifest, the dataset it makes, resuming, the
errors before any work, and processes that change nothing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from model.labels import CHEXPERT_LABELS
from model.notice import SYNTHETIC_NOTICE
from training.datasets.phantom import PhantomDirDataset
from training.datasets.real import patient_split
from training.longtail import local, output, run
from training.longtail.output import OutputError
from training.longtail.plan import PlanError, parse_targets, plan
from training.longtail.run import AugmentOptions, augment
from training.longtail.sources import SourceError, open_source

from .test_real_datasets import _csv, _img

VOLATILE = ("time", "seconds")  # the only fields that may differ between two runs of one plan


def _opts(tmp_path, checkpoint, **kw) -> AugmentOptions:
    base = dict(data="phantom:4:11", targets="Pneumonia,Fracture", out=str(tmp_path / "out"), checkpoint=checkpoint)
    return AugmentOptions(**{**base, "progress": False, **kw})


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _stable(rows) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_targets_are_refined_and_bad_ones_refused():
    targets = parse_targets("Pneumonia, Lung Lesion,no pleural effusion")
    assert [t.adds for t in targets] == [("Pneumonia",), ("Lung Lesion",), ()]
    assert targets[2].removes == ("Pleural Effusion",)
    for text, said in (
        ("Pneumonia,banana", "unknown target 'banana'"),
        ("", "names no finding"),
        ("Pneumonia,,Fracture", "empty entry"),
        ("Pneumonia,pneumonia", "twice"),
    ):
        with pytest.raises(PlanError, match=said):
            parse_targets(text)


def test_plan_seeds_depend_on_the_item_only_and_skip_what_is_already_there():
    sources = open_source("phantom:30:0")
    targets = parse_targets("Lung Opacity,Fracture")
    items, already = plan(sources, targets, per_image=2, seed=5)
    has_opacity = sum(s.labels["Lung Opacity"] for s in sources)
    assert has_opacity > 0 and already == has_opacity + sum(s.labels["Fracture"] for s in sources)
    assert len(items) == 2 * (2 * len(sources) - already)
    assert len({i.seed for i in items}) == len(items)
    again, _ = plan(sources[5:], targets, per_image=2, seed=5)  # another subset: the same seeds per item
    by_key = {i.key: i.seed for i in items}
    assert all(by_key[i.key] == i.seed for i in again)
    assert all(i.labels()[i.target.adds[0]] == 1 and i.labels()["No Finding"] == 0 for i in items)
    with pytest.raises(PlanError, match="--per-image"):
        plan(sources, targets, per_image=0, seed=5)


def test_sources_refuse_what_names_no_images(tmp_path):
    with pytest.raises(SourceError, match="the dataset is empty"):
        open_source("phantom:0")
    with pytest.raises(SourceError, match="no such directory"):
        open_source(str(tmp_path / "absent"))
    with pytest.raises(SourceError, match="no manifest.jsonl"):
        open_source(str(tmp_path))
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"chexpert:{tmp_path / 'absent'}")


def test_a_real_layout_is_read_as_files_of_its_training_split(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    rows = []
    pids = [f"{10000000 + i}" for i in range(400)]
    train = [p for p in pids if patient_split(f"patient{p}") == "train"][:3]
    test = [p for p in pids if patient_split(f"patient{p}") == "test"][:1]
    for k, pid in enumerate(train + test):
        rel = f"CheXpert-v1.0-small/train/patient{pid}/study1/view1_frontal.jpg"
        _img(tmp_path / rel, value=60 + k)
        rows.append({"Path": rel, "Frontal/Lateral": "Frontal", "AP/PA": "PA", "Pneumonia": 1 if k == 0 else 0})
    _csv(root / "train.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *["Pneumonia"]], rows)
    sources = open_source(f"chexpert:{root}")
    assert len(sources) == 3  # the test patient is left out
    assert sorted(s.labels["Pneumonia"] for s in sources) == [0, 0, 1]
    first = Image.open(io.BytesIO(sources[0].read()))
    assert first.size == (48, 40)  # the file as it is, at its own size


def test_augment_writes_a_dataset_with_a_line_per_item(tmp_path, tiny_checkpoint):
    summary = augment(_opts(tmp_path, tiny_checkpoint, keep_failed=True))
    out = tmp_path / "out"
    rows = _rows(out)
    assert len(rows) == summary.planned == summary.made and summary.resumed == 0
    assert sum(summary.outcomes.values()) == len(rows)
    header = json.loads((out / "augment.json").read_text())
    assert header["notice"] == SYNTHETIC_NOTICE
    assert header["settings"]["checkpoint_digest"] == rows[0]["checkpoint_digest"]
    sources = {s.id: s for s in open_source("phantom:4:11")}
    for r in rows:
        assert r["verdict"]["status"] and r["seed"] and r["condition"] and r["error"] is None and r["kept"]
        assert r["labels"][r["target"]] == 1 and r["source"]["labels"] == sources[r["source"]["id"]].labels
        img = Image.open(out / r["path"])
        assert img.text["Comment"] == SYNTHETIC_NOTICE and img.text["whatif:seed"] == str(r["seed"])
        src = np.asarray(Image.open(io.BytesIO(sources[r["source"]["id"]].read())))
        got = np.asarray(img)
        assert got.shape == src.shape == (r["height"], r["width"])
        assert (got != src).sum() == r["changed_pixels"] <= r["region_pixels"]  # the rest untouched
    data = PhantomDirDataset(out, 64)  # the project's own reader reads the result as a dataset
    assert len(data) == len(rows) and data[0]["labels"][CHEXPERT_LABELS.index(rows[0]["target"])] == 1


def test_only_edits_that_pass_and_change_the_image_are_kept_by_default(tmp_path, tiny_checkpoint, monkeypatch):
    real_run_item = local.run_item
    # the untrained model's own verdicts and changes, replaced by a known sequence
    verdicts = iter([("passed", 0), ("passed", 5), ("target not reached", 5), ("wrong side", 5)] * 4)

    def judged(*args):
        png, fields, error = real_run_item(*args)
        status, changed = next(verdicts)
        fields["verdict"] = {**fields["verdict"], "status": status, "passed": status == "passed"}
        fields["changed_pixels"] = changed
        return png, fields, error

    monkeypatch.setattr(local, "run_item", judged)
    summary = augment(_opts(tmp_path, tiny_checkpoint))
    rows = _rows(tmp_path / "out")
    for r in rows:
        kept = r["verdict"]["passed"] and r["changed_pixels"] > 0
        assert r["kept"] == r["passed"] == kept and bool(r["path"]) == kept
        assert (tmp_path / "out" / "images" / f"{r['id']}.png").exists() == kept
    for status in ("target not reached", "wrong side"):
        assert summary.outcomes[status] == sum(r["verdict"]["status"] == status for r in rows) > 0
    assert summary.outcomes["kept"] == sum(r["kept"] for r in rows) > 0
    unchanged = [r for r in rows if r["verdict"]["passed"] and not r["changed_pixels"]]
    assert summary.outcomes["unchanged (the judge saw the finding in the input)"] == len(unchanged) > 0


def test_a_stopped_run_resumes_to_the_same_result(tmp_path, tiny_checkpoint, monkeypatch):
    whole = tmp_path / "whole"
    augment(_opts(tmp_path, tiny_checkpoint, out=str(whole), keep_failed=True))
    expected = _stable(_rows(whole))

    real_run_local = run.run_local

    def stops_after_three(*args, **kwargs):
        for n, outcome in enumerate(real_run_local(*args, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt
            yield outcome

    cut = tmp_path / "cut"
    monkeypatch.setattr(run, "run_local", stops_after_three)
    with pytest.raises(KeyboardInterrupt):
        augment(_opts(tmp_path, tiny_checkpoint, out=str(cut), keep_failed=True))
    monkeypatch.setattr(run, "run_local", real_run_local)
    assert len(_rows(cut)) == 3 and not list((cut / "images").glob(".*"))  # whole files only
    # ... and a manifest cut mid-line, with a temporary file left by a rename that never happened
    with open(cut / "manifest.jsonl", "ab") as fh:
        fh.write(b'{"key":"phantom-11-')
    (cut / "images" / ".x.png.tmp").write_bytes(b"partial")
    summary = augment(_opts(tmp_path, tiny_checkpoint, out=str(cut), keep_failed=True))
    assert summary.resumed == 3 and summary.made == len(expected) - 3
    assert _stable(_rows(cut)) == expected
    assert sorted(p.name for p in (cut / "images").iterdir()) == sorted(p.name for p in (whole / "images").iterdir())
    for p in (whole / "images").iterdir():
        assert (cut / "images" / p.name).read_bytes() == p.read_bytes()
    again = augment(_opts(tmp_path, tiny_checkpoint, out=str(cut), keep_failed=True))  # done: nothing made
    assert again.made == 0 and again.resumed == len(expected)


def test_another_runs_directory_is_refused_before_any_work(tmp_path, tiny_checkpoint, monkeypatch):
    augment(_opts(tmp_path, tiny_checkpoint, targets="Fracture", limit=1))

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(run, "run_local", no_work)
    with pytest.raises(OutputError, match="another run's manifest .*targets"):
        augment(_opts(tmp_path, tiny_checkpoint, targets="Pneumonia", limit=1))
    with pytest.raises(OutputError, match="seed"):
        augment(_opts(tmp_path, tiny_checkpoint, targets="Fracture", limit=1, seed=1))
    phantom_dir = tmp_path / "phantoms"
    phantom_dir.mkdir()
    (phantom_dir / "manifest.jsonl").write_text('{"path": "images/a.png"}\n')
    with pytest.raises(OutputError, match="no `whatif augment` run wrote"):
        augment(_opts(tmp_path, tiny_checkpoint, out=str(phantom_dir)))
    with pytest.raises(PlanError, match="unknown target"):
        augment(_opts(tmp_path, tiny_checkpoint, out=str(tmp_path / "new"), targets="Fracture,banana"))
    assert not (tmp_path / "new").exists()


def test_a_rerun_makes_again_what_failed_for_the_machine(tmp_path, tiny_checkpoint):
    augment(_opts(tmp_path, tiny_checkpoint, limit=1, keep_failed=True))
    path = tmp_path / "out" / "manifest.jsonl"
    rows = _rows(tmp_path / "out")
    rows[0] = {**rows[0], "error": "failed: MemoryError on the worker", "path": None, "kept": False}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = augment(_opts(tmp_path, tiny_checkpoint, limit=1, keep_failed=True))
    assert summary.made == 1 and summary.resumed == len(rows) - 1
    assert output.outcome(_rows(tmp_path / "out")[-1]) != "error: failed"


@pytest.mark.slow
def test_two_processes_make_what_one_makes(tmp_path, tiny_checkpoint):
    one, two = tmp_path / "one", tmp_path / "two"
    augment(_opts(tmp_path, tiny_checkpoint, out=str(one), keep_failed=True, limit=2))
    augment(_opts(tmp_path, tiny_checkpoint, out=str(two), keep_failed=True, limit=2, workers=2))
    assert _stable(_rows(one)) == _stable(_rows(two))
    for p in (one / "images").iterdir():
        assert (two / "images" / p.name).read_bytes() == p.read_bytes()


def test_an_unreadable_image_is_recorded_and_the_run_goes_on(tmp_path, tiny_checkpoint):
    from training.phantom.cases import sample_case

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, payload in enumerate([b"not an image at all", None]):
        case = sample_case(7, i)
        path = f"images/{case.id}.png"
        (data / path).write_bytes(payload or case.render(64).png_bytes())
        rows.append(json.dumps(case.manifest_row(path)))
    (data / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    summary = augment(_opts(tmp_path, tiny_checkpoint, data=str(data), targets="Pleural Other", keep_failed=True))
    bad, good = _rows(tmp_path / "out")
    assert bad["error"].startswith("unreadable image:") and bad["path"] is None and not bad["kept"]
    assert good["error"] is None and good["kept"]
    assert summary.outcomes["error: unreadable image"] == 1
    again = augment(_opts(tmp_path, tiny_checkpoint, data=str(data), targets="Pleural Other", keep_failed=True))
    assert again.made == 0  # an input error is the input's: a rerun does not make it again


def test_a_moved_dataset_directory_is_the_same_data(tmp_path, tiny_checkpoint):
    from training.phantom.generate import generate

    generate(2, 64, 5, tmp_path / "here", progress=False)
    augment(_opts(tmp_path, tiny_checkpoint, data=str(tmp_path / "here"), targets="Fracture", keep_failed=True))
    (tmp_path / "here").rename(tmp_path / "there")
    again = augment(
        _opts(tmp_path, tiny_checkpoint, data=str(tmp_path / "there"), targets="Fracture", keep_failed=True)
    )
    assert again.made == 0 and again.resumed == again.planned  # named by its manifest's content, not its path
