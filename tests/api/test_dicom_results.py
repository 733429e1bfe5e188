"""result.dcm and report.dcm in both modes (worker/dicom_results.py), read back with pydicom and
highdicom: the attributes each must have, the UIDs linked as the mode says, and in the default
(de-identified) mode nothing of the input's patient data."""

import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from worker.blobs import BlobStore
from worker.dicom_results import Provenance, derived_image, source_of, structured_report, to_bytes
from worker.settings import WorkerSettings

from .conftest import KEY_A, UNLIMITED, stored, stub_app
from .test_hostile_uploads import _dataset, _file

NAME, MRN, BIRTH = "Quixandra^Velmorrow", "MRN4471902", "19530714"
VERDICT = {
    "status": "target not reached",
    "passed": False,
    "reason": "Pleural Effusion stays below the threshold",
    "numbers": {
        "threshold": 0.5,
        "added": {"Pleural Effusion": {"input": 0.1, "output": 0.3}},
        "removed": {},
        "side": "left",
        "side_share": 0.91,
        "ood_score": 1.25,
    },
}
FINDINGS = [{"label": "Pleural Effusion", "status": "present", "side": "left", "zones": [], "severity": "moderate"}]
DICOM_FILES = ("result.dcm", "report.dcm")
PROVENANCE = Provenance("moderate left pleural effusion", FINDINGS, 7, "sha256:abc123", VERDICT)


def _input_dataset():
    return _dataset(
        PatientName=NAME,
        PatientID=MRN,
        PatientBirthDate=BIRTH,
        PatientSex="F",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        AccessionNumber="ACC77",
        StudyDate="20240102",
    )


def _pixels():
    return (np.random.default_rng(0).random((150, 200)) * 65535).astype(np.uint16)


def _region():
    region = np.zeros((150, 200), bool)
    region[40:100, 120:180] = True
    return region


def _both(source):
    image = pydicom.dcmread(io.BytesIO(to_bytes(derived_image(_pixels(), PROVENANCE, source))))
    report = hd.sr.srread(io.BytesIO(to_bytes(structured_report(image, PROVENANCE, _region()))))
    return image, report


def _content(report) -> dict:
    """The report's content items by concept meaning (the last one of each meaning)."""
    out = {}
    for item in report.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            out[name] = item.TextValue
        elif item.ValueType == "NUM":
            out[name] = float(item.MeasuredValueSequence[0].NumericValue)
        else:
            out[name] = item
    return out


def _required(image, report):
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        assert image.get(keyword) and report.get(keyword), keyword
    assert list(image.ImageType) == ["DERIVED", "SECONDARY"]
    assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert report.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    # The report is in the image's study and references it, as content and as evidence.
    assert report.StudyInstanceUID == image.StudyInstanceUID
    assert report.SeriesInstanceUID != image.SeriesInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        image.SOPInstanceUID
    )
    said = _content(report)
    assert said["Counterfactual image"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert said["Requested condition"] == "moderate left pleural effusion"
    assert said["Requested finding"] == "Pleural Effusion (present, left, moderate)"
    assert said["Verdict"] == "target not reached" and said["Verdict reason"] == VERDICT["reason"]
    assert said["P(Pleural Effusion) on the output"] == 0.3 and said["Verdict threshold"] == 0.5
    assert said["Input OOD score (training SDs)"] == 1.25 and said["Seed"] == 7
    assert said["Checkpoint digest"] == "sha256:abc123"
    assert said["Edit region size in pixels"] == 60 * 60
    box = said["Image Region"]
    assert list(box.GraphicData) == [120, 40, 180, 40, 180, 100, 120, 100, 120, 40]
    assert box.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    for text in ("SYNTHETIC", "moderate left pleural effusion", "Seed 7", "sha256:abc123", "target not reached"):
        assert text in image.DerivationDescription, text


def test_deidentified_results_carry_nothing_of_the_input():
    given = _input_dataset()
    image, report = _both(None)
    _required(image, report)
    assert image.StudyInstanceUID != given.StudyInstanceUID
    assert image.PatientName == "SYNTHETIC^PHANTOM" and report.PatientName == "SYNTHETIC^PHANTOM"
    assert "SourceImageSequence" not in image and image.BurnedInAnnotation == "NO"
    assert np.array_equal(image.pixel_array, _pixels())  # the same pixels as result.png
    everything = to_bytes(image) + to_bytes(report)
    for planted in (NAME, MRN, BIRTH, "ACC77", given.StudyInstanceUID, given.SOPInstanceUID):
        assert planted.encode() not in everything, planted


def test_linked_results_join_the_input_study_as_a_new_series():
    given = _input_dataset()
    image, report = _both(source_of(given))
    _required(image, report)
    assert image.StudyInstanceUID == report.StudyInstanceUID == given.StudyInstanceUID
    assert image.SeriesInstanceUID not in (given.SeriesInstanceUID, report.SeriesInstanceUID)
    assert image.SOPInstanceUID != given.SOPInstanceUID
    for ds in (image, report):
        assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == (NAME, MRN, BIRTH, "F")
        assert (ds.AccessionNumber, ds.StudyDate) == ("ACC77", "20240102")
    (ref,) = image.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (given.SOPClassUID, given.SOPInstanceUID)
    # SYNTHETIC burned in: only a box in the top-left corner differs, white letters on black.
    assert image.BurnedInAnnotation == "YES"
    changed = image.pixel_array != _pixels()
    ys, xs = np.nonzero(changed)
    assert changed.any() and ys.max() < 150 // 4 and xs.max() < 200 // 2
    assert image.pixel_array.max() == 65535 and (image.pixel_array[changed] == 0).any()


def test_the_api_keeps_linked_identifiers_only_in_linked_mode(tmp_path, caplog):
    data = _file(_input_dataset())
    for mode in ("deidentified", "linked"):
        blobs = tmp_path / mode
        with TestClient(stub_app(blobs, dicom_mode=mode, **UNLIMITED)) as client:
            r = client.post(
                "/counterfactual",
                headers={"X-API-Key": KEY_A},
                files={"image": ("x.dcm", data, "application/dicom")},
                data={"target": "moderate left pleural effusion"},
            )
        assert r.status_code == 202, r.text
        store, job = BlobStore(blobs, 3600), r.json()["id"]
        names = {p.name.split(".", 1)[1] for p in stored(blobs)}
        if mode == "deidentified":
            assert "source.json" not in names and store.get_meta(job)["dicom_mode"] == "deidentified"
            continue
        source = json.loads(store.get(job, "source.json"))
        assert source["PatientName"] == NAME and source["PatientID"] == MRN and source["StudyInstanceUID"]
        assert set(source) <= set(source_of(_input_dataset()))  # only the linked mode's attributes
        assert store.get_meta(job)["dicom_mode"] == "linked"
        assert NAME not in r.text and MRN not in r.text
        store.delete(job)  # deleted with the job
        assert not (blobs / f"{job}.source.json").exists()
    assert not [rec for rec in caplog.records if NAME in rec.getMessage() or MRN in rec.getMessage()]


@pytest.mark.parametrize("mode", ["deidentified", "linked"])
def test_the_worker_writes_both_files_in_the_mode_of_the_job(tmp_path, tiny_checkpoint, mode):
    from PIL import Image

    from worker.tasks import counterfactual

    given = _input_dataset()
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = store.new_id()
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, format="PNG")
    store.put(job, "input.png", buf.getvalue())
    if mode == "linked":
        store.put(job, "source.json", json.dumps(source_of(given)).encode())
    store.put_meta(job, {"owner": "t", "notes": [], "dicom_mode": mode})
    params = {"findings": FINDINGS, "condition": "moderate left pleural effusion", "seed": 3, "optimize_seed": False}
    out = counterfactual(None, s, job, params)
    assert out["dicom_mode"] == mode and out["stored_on_dicomweb"] is False
    image = pydicom.dcmread(io.BytesIO(store.get(job, "result.dcm")))
    report = hd.sr.srread(io.BytesIO(store.get(job, "report.dcm")))
    assert report.StudyInstanceUID == image.StudyInstanceUID
    assert (image.StudyInstanceUID == given.StudyInstanceUID) is (mode == "linked")
    said = _content(report)
    assert said["Verdict"] == out["verdict"]["status"] and said["Seed"] == out["seed"] == 3
    assert said["Requested finding"] == "Pleural Effusion (present, left, moderate)"
    from model.modeling import checkpoint_digest

    assert said["Checkpoint digest"] == checkpoint_digest(tiny_checkpoint)
    assert checkpoint_digest(tiny_checkpoint) in image.DerivationDescription


@pytest.mark.parametrize("linked", [False, True])
def test_dciodvfy_finds_no_error_in_either_file(tmp_path, linked):
    """dicom3tools' IOD verifier (CI installs it): warnings allowed (no StudyID, the private coding
    scheme it cannot know), errors not."""
    import subprocess

    from tests.helpers import require_binary

    dciodvfy = require_binary("dciodvfy")
    image = derived_image(_pixels(), PROVENANCE, source_of(_input_dataset()) if linked else None)
    for name, ds in (("result.dcm", image), ("report.dcm", structured_report(image, PROVENANCE, _region()))):
        (tmp_path / name).write_bytes(to_bytes(ds))
        said = subprocess.run([dciodvfy, str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        lines = (said.stdout + said.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines


def test_linked_mode_copies_the_inputs_values_as_archives_hold_them():
    """Values highdicom's constructors refuse (PatientSex "U", a date with dashes) are the input's
    own: copied as they are, not a failed job."""
    source = {**source_of(_input_dataset()), "PatientSex": "U", "StudyDate": "2024-01-02", "PatientBirthDate": "1953"}
    image, report = _both(source)
    for ds in (image, report):
        assert (ds.PatientSex, ds.StudyDate, ds.PatientBirthDate, ds.PatientName) == ("U", "2024-01-02", "1953", NAME)


def test_a_dicom_upload_in_the_default_mode_gets_results_with_none_of_its_identifiers(service):
    """Upload to both files through the service (in-process worker, de-identified mode): the planted
    name, birth date and record number of the upload are in neither, nor are its UIDs."""
    import pydicom

    from .conftest import wait
    from .test_phi import PLANTED, _dicom_with_identifiers

    data = _dicom_with_identifiers()
    given = pydicom.dcmread(io.BytesIO(data))
    headers = {"X-API-Key": KEY_A}
    r = service.post(
        "/counterfactual",
        headers=headers,
        files={"image": ("x.dcm", data, "application/dicom")},
        data={"target": "moderate left pleural effusion"},
    )
    assert r.status_code == 202, r.text
    body, _ = wait(service, r.json()["id"], KEY_A)
    assert body["status"] == "succeeded" and body["result"]["dicom_mode"] == "deidentified", body
    files = [service.get(f"/jobs/{body['id']}/{name}", headers=headers).content for name in DICOM_FILES]
    report = hd.sr.srread(io.BytesIO(files[1]))
    assert report.StudyInstanceUID == pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    for planted in (*PLANTED, given.SOPInstanceUID):
        assert not [f for f in files if planted.encode() in f], planted
