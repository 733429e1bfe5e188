"""POST /preview: the web form's preview of an input the browser cannot show (a DICOM). It is the
input a job would store, decoded and de-identified on the decode pool, marked a preview; nothing
is stored; the upload's limits, the key and a rate apply."""

import io
import json

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from .conftest import KEY_A, UNLIMITED, png_bytes, stored, stub_app
from .test_hostile_uploads import _dataset, _file

H = {"X-API-Key": KEY_A}
NAME = "Quixandra^Velmorrow"


def _dicom(rows=96, columns=128, **attrs) -> bytes:
    """A 12-bit DX radiograph with a patient, not square (its height and width must not swap)."""
    pixels = (np.add.outer(np.arange(rows) * 20, np.arange(columns) * 9) % 4096).astype(np.uint16)
    return _file(_dataset(pixels.tobytes(), rows=rows, columns=columns, PatientName=NAME, **attrs))


def _preview(client, data: bytes, name="x.dcm", headers=H):
    return client.post("/preview", headers=headers, files={"image": (name, data, "application/dicom")})


def _job(client, data: bytes):
    """The job the same upload makes (POST /counterfactual)."""
    return client.post(
        "/counterfactual", headers=H, data={"target": "small left pleural effusion"}, files={"image": ("x.dcm", data)}
    )


def test_a_dicom_preview_is_the_input_a_job_stores_marked_and_not_stored(tmp_path):
    data = _dicom()
    with TestClient(stub_app(tmp_path, **UNLIMITED)) as client:
        r = _preview(client, data)
        assert r.status_code == 200, r.text
        assert not stored(tmp_path, index=True)  # nothing written, not even an index entry
        made = _job(client, data)
        assert made.status_code == 202, made.text
        job_input = client.app.state.store.get(made.json()["id"], "input.png")
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-whatif-preview"].startswith("PREVIEW") and r.headers["x-whatif-source-format"] == "dicom"
    notes = json.loads(r.headers["x-whatif-notes"])
    assert notes[0].startswith("DICOM de-identified before storage")
    shown = Image.open(io.BytesIO(r.content))
    assert shown.info["Comment"].startswith("PREVIEW") and "not SYNTHETIC" in shown.info["Comment"]
    # The decoded, de-identified pixels at the job's size, exactly: what the model will be given.
    assert shown.size == (128, 96)
    assert np.array_equal(np.asarray(shown), np.asarray(Image.open(io.BytesIO(job_input))))
    assert NAME.encode() not in r.content and NAME not in str(r.headers)


def test_a_file_the_service_cannot_use_is_refused_with_its_reason(tmp_path):
    with TestClient(stub_app(tmp_path, **UNLIMITED)) as client:
        not_an_image = _preview(client, b"PK\x03\x04 a zip, not a radiograph")
        empty = _preview(client, b"")
        colour = _preview(client, _dicom(PhotometricInterpretation="RGB"))
        missing = client.post("/preview", headers=H)
        png = _preview(client, png_bytes(), name="x.png")
    assert not_an_image.status_code == 415 and "send PNG, JPEG or DICOM" in not_an_image.json()["detail"]
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    assert colour.status_code in (415, 422) and colour.json()["detail"]
    assert missing.status_code == 422 and missing.json()["errors"][0]["loc"] == ["body", "image"]
    for r in (not_an_image, empty, colour, missing):
        assert r.headers["content-type"] == "application/problem+json"
    assert png.status_code == 200 and png.headers["x-whatif-source-format"] == "png"  # any upload, as for a job
    assert not stored(tmp_path, index=True)


def test_the_upload_limits_apply(tmp_path):
    data = _dicom()
    with TestClient(stub_app(tmp_path / "a", max_upload_bytes=len(data) - 1, **UNLIMITED)) as client:
        big = _preview(client, data)
    with TestClient(stub_app(tmp_path / "b", max_pixels=96 * 128 - 1, **UNLIMITED)) as client:
        many = _preview(client, data)
    assert big.status_code == 413 and big.json()["type"].endswith("upload-too-large"), big.text
    assert many.status_code == 413 and "pixels" in many.json()["detail"], many.text


def test_the_key_and_a_rate_of_its_own_apply(tmp_path):
    data = _dicom()
    with TestClient(stub_app(tmp_path, jobs_per_minute=2, jobs_per_minute_per_address=100)) as client:
        assert _preview(client, data, headers={}).status_code == 401
        assert [_preview(client, data).status_code for _ in range(2)] == [200, 200]
        third = _preview(client, data)
        assert third.status_code == 429 and third.json()["type"].endswith("preview-rate-limited"), third.text
        assert int(third.headers["retry-after"]) >= 1
        # Previews spend their own bucket, not the jobs': the job they came before is still made.
        made = _job(client, data)
        assert made.status_code == 202, made.text
