"""PHI nowhere: identifiers planted in every place a request can carry them (the target text, the
file names, DICOM tags public, private and nested, PNG text chunks, JPEG EXIF) appear in no stored
file, no queued message, no log line (DEBUG included, a 500's too) and no response."""

import io
import logging

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .conftest import KEY_A, UNLIMITED, png_bytes, stored, stub_app
from .test_hostile_uploads import _dataset, _file

NAME = ("Quixandra", "Velmorrow")  # given and family name, unlikely anywhere else
BIRTH = "1953-07-14"
MRN = "MRN4471902"
PLANTED = [*NAME, BIRTH, BIRTH.replace("-", ""), MRN]
TARGET = f"small left pleural effusion for {NAME[0]} {NAME[1]} born {BIRTH}, {MRN}"
H = {"X-API-Key": KEY_A}


def _png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", f"{NAME[1]}^{NAME[0]}")
    info.add_text("Comment", f"born {BIRTH}", zip=True)  # zTXt: compressed, invisible to a byte search
    info.add_itxt("Identifier", MRN, zip=True)
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _jpeg_with_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = f"{NAME[0]} {NAME[1]} {BIRTH}"  # ImageDescription
    exif[0x013B] = f"{NAME[1]}, {MRN}"  # Artist
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).convert("L").save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _dicom_with_identifiers() -> bytes:
    ds = _dataset(
        PatientName=f"{NAME[1]}^{NAME[0]}",
        PatientID=MRN,
        PatientBirthDate=BIRTH.replace("-", ""),
        StudyDescription=f"chest for {NAME[0]} {NAME[1]}",
    )
    ds.add_new(0x00091010, "LO", f"{NAME[1]} {MRN}")  # private
    item = Dataset()
    item.PatientName = f"{NAME[1]}^{NAME[0]}"
    item.PatientID = MRN
    ds.ReferencedPatientSequence = Sequence([item])  # nested
    return _file(ds)


UPLOADS = {
    "png text chunks": (f"{NAME[1]}_{MRN}.png", _png_with_text, "image/png"),
    "jpeg exif": (f"{NAME[0]} {BIRTH}.jpg", _jpeg_with_exif, "image/jpeg"),
    "dicom tags": (f"{NAME[1]}^{NAME[0]}.dcm", _dicom_with_identifiers, "application/dicom"),
}


def _leaks(data: bytes | str, where: str) -> list[str]:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [f"{p!r} in {where}" for p in PLANTED if p.lower() in text.lower()]


def _stored_leaks(root) -> list[str]:
    found = []
    for path in stored(root, index=True):
        data = path.read_bytes()
        found += _leaks(data, path.name)
        if data.startswith(b"\x89PNG"):  # compressed text chunks: read them decoded
            found += _leaks(repr(Image.open(io.BytesIO(data)).text), f"{path.name}'s text chunks")
        found += _leaks(path.name, "a file name")
    return found


@pytest.mark.parametrize("upload", list(UPLOADS))
def test_planted_identifiers_are_stored_queued_logged_and_answered_nowhere(tmp_path, caplog, upload):
    name, make, ctype = UPLOADS[upload]
    data = make()
    caplog.set_level(logging.DEBUG)
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    answers = []
    with TestClient(app) as client:
        r = client.post(
            "/counterfactual",
            headers={**H, "Idempotency-Key": f"{NAME[1]}-{BIRTH}"},
            files={"image": (name, data, ctype), "mask": (f"{NAME[0]}.png", b"not a png", "image/png")},
            data={"target": TARGET},
        )
        answers.append(r)
        assert r.status_code == 415, r.text  # the mask: refused, and its name not echoed either
        r = client.post(
            "/counterfactual",
            headers={**H, "Idempotency-Key": f"{NAME[1]}-{BIRTH}"},
            files={"image": (name, data, ctype)},
            data={"target": TARGET},
        )
        answers.append(r)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        assert r.json()["condition"] == "small left pleural effusion"
        answers.append(client.get(f"/jobs/{job}", headers=H))
        # A target the refiner does not understand is refused without being quoted back.
        answers.append(
            client.post(
                "/counterfactual",
                headers=H,
                files={"image": (name, data, ctype)},
                data={"target": f"{NAME[0]} {NAME[1]} born {BIRTH}"},
            )
        )
        assert answers[-1].status_code == 422
        # A field out of range: FastAPI's validation error would echo the value as `input`.
        answers.append(
            client.post(
                "/counterfactual",
                headers=H,
                files={"image": (name, data, ctype)},
                data={"target": TARGET, "seed": f"{MRN}"},
            )
        )
        assert answers[-1].status_code == 422
    found = _stored_leaks(tmp_path / "blobs")
    for message in app.state.celery.messages:
        found += _leaks(message, "a queued message")
    for record in caplog.records:
        found += _leaks(record.getMessage(), f"a log line of {record.name}")
        if record.exc_info:
            found += _leaks(logging.Formatter().formatException(record.exc_info), f"a traceback of {record.name}")
    for r in answers:
        found += _leaks(r.content, f"a {r.status_code} response") + _leaks(str(r.headers), "a response's headers")
    assert app.state.celery.messages, "the job was queued"
    assert not found, found


def test_the_worker_is_sent_the_refined_findings_only(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        r = client.post(
            "/counterfactual", headers=H, files={"image": ("x.png", png_bytes(), "image/png")}, data={"target": TARGET}
        )
    assert r.status_code == 202, r.text
    (message,) = app.state.celery.messages
    assert '"target"' not in message
    meta = (tmp_path / "blobs" / f"{r.json()['id']}.json").read_text()
    assert '"findings"' in meta and "pleural effusion" in meta and '"target"' not in meta


def test_an_unexpected_error_is_logged_without_its_message(tmp_path, caplog, monkeypatch):
    """An exception's message can quote the request; the 500 and its log line carry the type and the
    frames, never the message."""
    import model.refine

    def broken(text):
        raise RuntimeError(f"could not refine {text!r}")

    monkeypatch.setattr(model.refine, "refine_request", broken)
    caplog.set_level(logging.DEBUG)
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(
            "/counterfactual", headers=H, files={"image": ("x.png", png_bytes(), "image/png")}, data={"target": TARGET}
        )
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    logged = [rec for rec in caplog.records if rec.name == "api.errors"]
    assert logged and "RuntimeError" in logged[0].getMessage() and "counterfactual.py" in logged[0].getMessage()
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    text += "".join(logging.Formatter().formatException(rec.exc_info) for rec in caplog.records if rec.exc_info)
    assert not _leaks(text, "the log") and not _leaks(r.content, "the 500")
