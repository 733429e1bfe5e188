"""Routes of the API with the Celery task running in-process."""

import io

import numpy as np
import pydicom
from PIL import Image

from .conftest import KEY_A, KEY_B, png_bytes, wait

H = {"X-API-Key": KEY_A}


def test_upload_to_result(service):
    r = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "moderate left pleural effusion", "seed": "3", "start": "noise"},
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job}" and len(job) >= 22
    body, seen = wait(service, job, KEY_A)
    assert body["status"] == "succeeded", body
    assert body["condition"] == "moderate left pleural effusion"
    assert body["created_at"] <= body["started_at"] <= body["finished_at"]
    assert set(body["links"]) == {"result.png", "diff.png", "result.dcm"}
    q = body["result"]["quality"]
    assert "Pleural Effusion" in q["target_probability"] and body["result"]["lp_history"]
    assert "inversion" not in body["result"]["timings_s"]  # the requested start reached the worker
    assert body["result"]["seed_kept"] is None  # the tiny checkpoint runs no guard: no verdict
    png = service.get(f"/jobs/{job}/result.png", headers=H)
    assert png.status_code == 200 and "SYNTHETIC" in Image.open(io.BytesIO(png.content)).info["Comment"]
    dcm = pydicom.dcmread(io.BytesIO(service.get(f"/jobs/{job}/result.dcm", headers=H).content))
    assert list(dcm.ImageType) == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in dcm.ImageComments
    assert Image.open(io.BytesIO(service.get(f"/jobs/{job}/diff.png", headers=H).content)).mode == "RGB"
    # Another key cannot see it; deleting removes it.
    assert service.get(f"/jobs/{job}", headers={"X-API-Key": KEY_B}).status_code == 404
    assert service.delete(f"/jobs/{job}", headers=H).status_code == 204
    assert service.get(f"/jobs/{job}", headers=H).status_code == 404


def test_authentication_required(service):
    r = service.post(
        "/counterfactual", files={"image": ("x.png", png_bytes(), "image/png")}, data={"target": "mild edema"}
    )
    assert r.status_code == 401
    assert service.get("/jobs/whatever-id-000000000000", headers={"X-API-Key": "x" * 32}).status_code == 401


def _post(service, data, target="mild edema", name="x.png", ctype="image/png"):
    return service.post("/counterfactual", headers=H, files={"image": (name, data, ctype)}, data={"target": target})


def test_bad_inputs_are_clear_4xx(service):
    cases = [
        (_post(service, png_bytes(), target="   "), 422, "empty"),
        (_post(service, png_bytes(), target="make it spooky"), 422, "understood findings"),
        (_post(service, b"not an image at all"), 415, "PNG, JPEG or DICOM"),
        (_post(service, b""), 422, "empty"),
        (_post(service, png_bytes()[:200]), 415, "corrupt"),
        (_post(service, b"\0" * 8_100_000), 413, "larger than"),
    ]
    bad_start = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "mild edema", "start": "reference"},
    )
    cases.append((bad_start, 422, "inversion"))
    bad_detail = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "mild edema", "detail": "5"},
    )
    cases.append((bad_detail, 422, "less than or equal to 2"))
    big = Image.new("L", (3000, 2000))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    cases.append((_post(service, buf.getvalue()), 413, "pixels"))
    for r, code, msg in cases:
        assert r.status_code == code, (r.status_code, r.text)
        assert msg in str(r.json()["detail"]), r.text


def test_rgb_and_16_bit_and_dicom_are_accepted(service):
    import importlib.util
    from pathlib import Path

    r = _post(service, png_bytes(mode="RGB"))
    assert r.status_code == 202
    body, _ = wait(service, r.json()["id"], KEY_A)
    assert body["status"] == "succeeded" and "converted colour to grey" in body["result"]["quality"]["notes"]
    arr = (np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert _post(service, buf.getvalue()).status_code == 202
    root = Path(next(iter(importlib.util.find_spec("data_store").submodule_search_locations))) / "data"
    # The real RG1 radiograph: MONOCHROME1, 16-bit, JPEG 2000 lossless.
    r = _post(service, (root / "RG1_J2KR.dcm").read_bytes(), name="rg1.dcm", ctype="application/dicom")
    assert r.status_code == 202, r.text
    body, _ = wait(service, r.json()["id"], KEY_A)
    assert body["status"] == "succeeded" and "inverted MONOCHROME1" in body["result"]["quality"]["notes"]


def test_health_metrics_openapi(service):
    assert service.get("/healthz").json() == {"status": "ok"}
    ready = service.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1
    service.get("/jobs/no-such-job", headers=H)
    text = service.get("/metrics").text
    assert "whatif_jobs_created_total" in text
    # Latency per route template, never per raw path (a job id would make a series per job).
    assert 'whatif_request_seconds_count{method="GET",route="/healthz"}' in text
    assert 'route="/jobs/{job_id}"' in text and "no-such-job" not in text
    assert "/counterfactual" in service.get("/openapi.json").json()["paths"]


def test_serve_refuses_a_public_address_without_keys(capsys, monkeypatch):
    import pytest

    from whatif.cli import main

    monkeypatch.delenv("WHATIF_API_KEYS", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--host", "0.0.0.0", "--port", "8769"])
    assert exc.value.code == 2 and "WHATIF_API_KEYS" in capsys.readouterr().err


def test_settings_refuse_weak_keys_and_open_public_mode():
    import pytest
    from pydantic import ValidationError

    from api.core.config import Settings

    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(api_keys=["changeme"])
    with pytest.raises(ValidationError, match="only allowed in single-machine mode"):
        Settings(auth_disabled=True, single_machine=True, bind_host="0.0.0.0")


def test_status_never_shows_a_finish_without_its_timestamps():
    # The worker finishes between the route's reads: it writes finished_at, then Celery records
    # SUCCESS. Whatever the route reports must agree with the timestamps it read.
    from types import SimpleNamespace

    from api.routes.jobs import status

    result = SimpleNamespace(state="STARTED", info=None, result=None, date_done=None)
    meta = {"owner": "me", "condition": "mild edema", "created_at": 1.0, "started_at": 2.0}

    class Store:
        def get_meta(self, job_id):
            snapshot = dict(meta)
            meta["finished_at"] = 3.0  # the job ends right after this read
            result.state, result.result = "SUCCESS", {"condition": "mild edema"}
            return snapshot

    app = SimpleNamespace(state=SimpleNamespace(celery=SimpleNamespace(AsyncResult=lambda job_id: result)))
    body = status("j" * 22, SimpleNamespace(app=app), "me", Store())
    assert body.status == "running" and body.finished_at is None
    body = status("j" * 22, SimpleNamespace(app=app), "me", Store())
    assert body.status == "succeeded" and body.finished_at == 3.0
