"""De-identification of uploaded DICOM: deid's recipe plus a fail-closed check, on the real RG1 radiograph."""

import importlib.util
import io
from pathlib import Path

import pydicom
import pytest

from api.deidentify import DeidentificationError, deidentify, remaining_identifiers
from api.ingest import decode_upload
from api.rejection import UploadRejected

ROOT = Path(next(iter(importlib.util.find_spec("data_store").submodule_search_locations))) / "data"


def _rg1():
    return pydicom.dcmread(ROOT / "RG1_J2KR.dcm")


def test_rg1_loses_every_identifier_and_keeps_its_pixels():
    ds = _rg1()
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate"} <= set(
        remaining_identifiers(ds)
    )
    ds.add_new(0x00091001, "LO", "private vendor note")  # a private tag must go too
    clean, removed = deidentify(ds)
    assert remaining_identifiers(clean) == [] and removed >= 20
    assert "PatientName" not in clean and "IssuerOfPatientID" not in clean  # deid 0.4.13 keeps the latter
    assert clean.pixel_array.shape == (1955, 1841) and clean.PhotometricInterpretation == "MONOCHROME1"


def test_burned_in_annotations_are_refused():
    ds = _rg1()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="burned-in"):
        deidentify(ds)
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(UploadRejected) as exc:
        decode_upload(buf.getvalue(), 64 * 2**20, 50_000_000, 128 * 2**20)
    assert exc.value.status == 422


def test_upload_path_stores_pixels_only_and_says_it_deidentified():
    data = (ROOT / "RG1_J2KR.dcm").read_bytes()
    assert b"CompressedSamples^RG1" in data
    png, notes, fmt = decode_upload(data, 64 * 2**20, 50_000_000, 128 * 2**20)
    assert fmt == "dicom" and png.startswith(b"\x89PNG") and b"RG1" not in png
    assert any("de-identified" in n for n in notes) and any("MONOCHROME1" in n for n in notes)


def test_the_api_process_does_not_import_torch(tmp_path):
    # The API decodes, de-identifies and enqueues; torch (and CUDA) belong to the workers only.
    import subprocess
    import sys

    code = f"""
import sys
from fastapi.testclient import TestClient
from api.main import create_app
from api.core.config import Settings
KEY = "iRGPSlFqt7UynFRu90SqmWQ_D02sUZuA"
settings = Settings(
    api_keys=[KEY], broker_url="memory://", blob_dir={str(tmp_path)!r}
)
app = create_app(settings)
client = TestClient(app)
data = open({str(ROOT / "RG1_J2KR.dcm")!r}, "rb").read()
r = client.post(
    "/counterfactual",
    files={{"image": ("rg1.dcm", data, "application/dicom")}},
    data={{"target": "small left effusion"}},
    headers={{"X-API-Key": KEY}},
)
assert r.status_code == 202, r.text
assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
