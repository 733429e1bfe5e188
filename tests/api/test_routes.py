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
    assert set(body["links"]) == {"result.png", "region.png", "diff.png", "result.dcm", "report.dcm"}
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
    # The worker says where its model runs: the CPU here, in fp32 (WHATIF_DEVICE/PRECISION auto).
    (model,) = ready.json()["models"]
    assert model["device"] == "cpu" and model["precision"] == "fp32"
    assert model["preset"] == "tiny" and model["workers"] == ready.json()["workers"]
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


def _wide_png(w=200, h=150) -> bytes:
    from training.phantom.renderer import render

    img = Image.fromarray(render(4, [], 0, w).image[(w - h) // 2 : (w - h) // 2 + h])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mask_png(mask: np.ndarray, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _as16(png: bytes) -> np.ndarray:
    """The stored input in 16 bits: an 8-bit source is stored in 8 (v), its 16-bit value is v * 257."""
    stored = np.asarray(Image.open(io.BytesIO(png)))
    return stored.astype(np.uint16) * 257 if stored.dtype == np.uint8 else stored


def _get_png(service, job, name):
    r = service.get(f"/jobs/{job}/{name}", headers=H)
    assert r.status_code == 200, (name, r.status_code)
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_result_at_the_input_size_and_unchanged_outside_the_region(service):
    r = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", _wide_png(), "image/png")},
        data={"target": "moderate left pleural effusion", "candidates": "2", "steps": "2"},
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    body, _ = wait(service, job, KEY_A)
    assert body["status"] == "succeeded", body
    res = body["result"]
    assert (res["width"], res["height"]) == (200, 150) and res["region_source"] == "automatic"
    assert res["verdict"]["status"] and res["verdict"]["reason"] and len(res["candidates"]) == 2
    assert body["links"]["region.png"] == f"/jobs/{job}/region.png"
    given = _as16(service.app.state.store.get(job, "input.png"))
    result, region = _get_png(service, job, "result.png"), _get_png(service, job, "region.png")
    assert result.dtype == np.uint16 and result.shape == region.shape == given.shape == (150, 200)
    assert np.array_equal(result[region == 0], given[region == 0])
    assert _get_png(service, job, "diff.png").shape[:2] == (150, 200)
    dcm = pydicom.dcmread(io.BytesIO(service.get(f"/jobs/{job}/result.dcm", headers=H).content))
    assert (dcm.Rows, dcm.Columns, dcm.BitsAllocated) == (150, 200, 16)
    assert res["verdict"]["status"] in dcm.ImageComments and "SYNTHETIC" in dcm.ImageComments
    # The region image is the job's, like the result: another key does not see it.
    assert service.get(f"/jobs/{job}/region.png", headers={"X-API-Key": KEY_B}).status_code == 404


def test_a_box_or_a_mask_is_the_edit_region_and_expires_with_the_job(service):
    store = service.app.state.store
    r = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", _wide_png(), "image/png")},
        data={"target": "moderate left pleural effusion", "box": "110,30,190,120", "steps": "2"},
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    body, _ = wait(service, job, KEY_A)
    assert body["status"] == "succeeded" and body["result"]["region_source"] == "user", body
    inside = np.zeros((150, 200), bool)
    inside[30:120, 110:190] = True
    given = _as16(store.get(job, "input.png"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(store.get(job, "mask.png")))) > 0, inside)
    assert not _get_png(service, job, "region.png")[~inside].any()
    assert np.array_equal(_get_png(service, job, "result.png")[~inside], given[~inside])
    # An RGB mask (nonzero = inside) is accepted too; the stored mask is deleted with its job.
    r = service.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", _wide_png(), "image/png"), "mask": ("m.png", _mask_png(inside, "RGB"), "image/png")},
        data={"target": "moderate left pleural effusion", "steps": "2"},
    )
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert store.get(job, "mask.png")
    wait(service, job, KEY_A)
    assert service.delete(f"/jobs/{job}", headers=H).status_code == 204
    # Only the empty tombstone a delete leaves for a few minutes (worker/blobs.py).
    assert [p.name for p in store.root.glob(f"{job}.*")] == [f"{job}.deleted"]


def test_bad_regions_and_candidates_are_4xx_and_nothing_is_stored(service):
    store = service.app.state.store
    full = np.ones((150, 200), bool)
    viewer_left = np.zeros((150, 200), bool)
    viewer_left[20:130, 10:90] = True  # the patient's right
    cases = [
        ({"mask": _mask_png(np.ones((100, 100), bool))}, {}, 422, "they must match"),
        ({"mask": _mask_png(~full)}, {}, 422, "empty"),
        ({"mask": _mask_png(viewer_left)}, {}, 422, "patient's left"),
        ({"mask": b"GIF89a not a png"}, {}, 415, "PNG"),
        ({}, {"box": "10,10,250,100"}, 422, "outside"),
        ({}, {"box": "-1,0,50,50"}, 422, "outside"),
        ({}, {"box": "120,40,120,90"}, 422, "empty"),
        ({}, {"box": "1,2,3"}, 422, "four whole numbers"),
        ({}, {"box": "20,20,80,120"}, 422, "patient's left"),
        ({"mask": _mask_png(full)}, {"box": "110,30,190,120"}, 422, "not both"),
        ({}, {"candidates": "0"}, 422, "greater than or equal to 1"),
        ({}, {"candidates": "9"}, 422, "less than or equal to 8"),
    ]

    def jobs():  # ids with files; a job of an earlier test may still be writing its results
        return {p.name.split(".")[0] for p in store.root.iterdir() if not p.name.startswith(".tmp-")}

    before = jobs()
    for files, data, code, msg in cases:
        files = {
            "image": ("x.png", _wide_png(), "image/png"),
            **{k: ("m.png", v, "image/png") for k, v in files.items()},
        }
        r = service.post(
            "/counterfactual",
            headers=H,
            files=files,
            data={"target": "moderate left pleural effusion", **data},
        )
        assert r.status_code == code, (data, r.status_code, r.text)
        assert msg in str(r.json()["detail"]), (data, r.text)
    assert jobs() == before


def test_the_api_candidate_bound_is_the_pipelines():
    from api.routes.counterfactual import MAX_CANDIDATES
    from model.pipeline import MAX_CANDIDATES as PIPELINE_MAX

    assert MAX_CANDIDATES == PIPELINE_MAX
