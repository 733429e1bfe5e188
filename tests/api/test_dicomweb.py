"""DICOMweb both ways against a real PACS: an Orthanc with its DICOMweb plugin (tests/helpers.py,
started as redis-server is). A job names an instance by its UIDs; the API fetches it (WADO-RS),
the worker stores the derived image and the report back in its study (STOW-RS). And the bad
inputs: a UID the server does not hold, a server that is down (when the job is made, and when its
results are stored), an instance that is not a radiograph.

The jobs the API sends are run here by the worker's task itself (`_run_sent`): an in-process worker
on memory:// would share its queue with the session's `service` (tests/api/conftest.py), kombu's
memory transport being one per process, and take its jobs or lose its own."""

import io
import json
import logging
import time

import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage, SecondaryCaptureImageStorage

from tests.helpers import free_port
from worker.blobs import BlobStore
from worker.dicom_results import source_of
from worker.settings import WorkerSettings

from .conftest import KEY_A, UNLIMITED, stored
from .test_dicom_results import FINDINGS, NAME, _input_dataset
from .test_hostile_uploads import _file

H = {"X-API-Key": KEY_A}
TARGET = "moderate left pleural effusion"


def _uids(ds) -> dict:
    return {"study_uid": ds.StudyInstanceUID, "series_uid": ds.SeriesInstanceUID, "instance_uid": ds.SOPInstanceUID}


def _put(url: str, ds) -> None:
    import pydicom

    DICOMwebClient(url).store_instances([pydicom.dcmread(io.BytesIO(_file(ds)))])


def _linked_app(url: str, checkpoint: str, blobs):
    """The app in linked mode on the Orthanc at `url`, on a stub queue (`_run_sent` runs its jobs)."""
    from .conftest import stub_app

    return stub_app(blobs, checkpoint=checkpoint, dicom_mode="linked", dicomweb_url=url, **UNLIMITED)


def _run_sent(app) -> None:
    """Run every job the app has sent, as a worker with the app's settings would."""
    from worker.tasks import counterfactual

    for message in app.state.celery.messages:
        counterfactual(None, app.state.settings, *json.loads(message)["args"])
    app.state.celery.messages.clear()


@pytest.fixture()
def linked_service(orthanc_url, tiny_checkpoint, tmp_path):
    app = _linked_app(orthanc_url, tiny_checkpoint, tmp_path / "blobs")
    with TestClient(app) as client:
        yield client, orthanc_url, tmp_path / "blobs"


@pytest.mark.slow
def test_round_trip_instance_in_orthanc_to_results_in_its_study(linked_service):
    client, url, _ = linked_service
    given = _input_dataset()
    _put(url, given)
    started = time.monotonic()
    r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(given)})
    assert r.status_code == 202, r.text
    _run_sent(client.app)
    body = client.get(f"/jobs/{r.json()['id']}", headers=H).json()
    took = time.monotonic() - started
    assert body["status"] == "succeeded", body
    assert body["result"]["dicom_mode"] == "linked" and body["result"]["stored_on_dicomweb"] is True
    # QIDO-RS: the study now holds the input, the derived image and the report, in three series.
    pacs = DICOMwebClient(url)
    found = pacs.search_for_instances(study_instance_uid=given.StudyInstanceUID)
    classes = sorted(item["00080016"]["Value"][0] for item in found)
    assert classes == sorted([given.SOPClassUID, SecondaryCaptureImageStorage, ComprehensiveSRStorage])
    assert len({item["0020000E"]["Value"][0] for item in found}) == 3
    sr_item = next(i for i in found if i["00080016"]["Value"][0] == ComprehensiveSRStorage)
    report = pacs.retrieve_instance(
        given.StudyInstanceUID, sr_item["0020000E"]["Value"][0], sr_item["00080018"]["Value"][0]
    )
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.get("TextValue") for i in report.ContentSequence}
    assert texts["Verdict"] == body["result"]["verdict"]["status"]
    assert report.PatientName == NAME
    # The one served by the API is the one stored.
    served = client.get(f"/jobs/{body['id']}/report.dcm", headers=H)
    assert served.status_code == 200 and report.SOPInstanceUID.encode() in served.content
    print(f"\nround trip: job by UIDs to results in the study, {took:.2f} s")


def test_a_uid_the_server_does_not_hold_is_404_and_stores_nothing(linked_service, caplog):
    client, url, blobs = linked_service
    given = _input_dataset()
    _put(url, given)
    caplog.set_level(logging.DEBUG)
    r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(given), "instance_uid": "1.2.3.4"})
    assert r.status_code == 404, r.text
    assert r.json()["type"].endswith("dicom-instance-not-found") and "does not hold" in r.json()["detail"]
    assert "1.2.3.4" not in r.text and not stored(blobs)
    # The study's UIDs identify it: no log line carries them, at DEBUG either (requests' URLs included).
    assert not [rec for rec in caplog.records if given.StudyInstanceUID in rec.getMessage()]


def test_an_instance_that_is_not_a_radiograph_is_refused(linked_service):
    client, url, blobs = linked_service
    ct = _input_dataset()
    ct.Modality, ct.SOPClassUID = "CT", CTImageStorage
    _put(url, ct)
    r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(ct)})
    assert r.status_code == 422 and "not a radiograph (modality CT)" in r.json()["detail"], r.text
    assert not stored(blobs)


def test_a_server_that_is_down_refuses_the_job_with_nothing_stored(tmp_path):
    from .conftest import stub_app

    down = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    with TestClient(stub_app(tmp_path, dicomweb_url=down, **UNLIMITED)) as client:
        started = time.monotonic()
        r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(_input_dataset())})
        took = time.monotonic() - started
        assert r.status_code == 502, r.text
        assert r.json()["type"].endswith("dicomweb-unavailable") and "cannot be reached" in r.json()["detail"]
        assert not stored(tmp_path) and took < 5
        print(f"\nserver down: 502 in {took:.2f} s")
        # Neither an image nor UIDs, both, some of the UIDs, or UIDs without a server: 422.
        for data, files in (
            ({"target": TARGET}, None),
            ({"target": TARGET, **_uids(_input_dataset())}, {"image": ("x.dcm", b"x", "application/dicom")}),
            ({"target": TARGET, "study_uid": "1.2"}, None),
        ):
            assert client.post("/counterfactual", headers=H, data=data, files=files).status_code == 422
    with TestClient(stub_app(tmp_path, **UNLIMITED)) as client:
        r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(_input_dataset())})
        assert r.status_code == 422 and "WHATIF_DICOMWEB_URL" in r.json()["detail"]


def test_a_server_down_when_the_results_are_stored_fails_the_job_with_nothing_written(tmp_path, tiny_checkpoint):
    from worker.tasks import JobError, counterfactual

    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, dicomweb_url=down)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = store.new_id()
    buf = io.BytesIO()
    Image.fromarray(np.full((96, 96), 30000, np.uint16)).save(buf, format="PNG")
    store.put(job, "input.png", buf.getvalue())
    store.put(job, "source.json", json.dumps(source_of(_input_dataset())).encode())
    store.put_meta(job, {"owner": "t", "notes": [], "dicom_mode": "linked", "dicomweb": True})
    params = {"findings": FINDINGS, "condition": TARGET, "seed": 0, "optimize_seed": False}
    with pytest.raises(JobError, match="cannot be reached when storing the results"):
        counterfactual(None, s, job, params)
    meta = store.get_meta(job)
    assert meta["state"] == "failed" and "cannot be reached" in meta["error"]
    # nothing of the results: the record, the input, its identifiers and the (empty) lock taking it
    assert {p.name.split(".", 1)[1] for p in stored(tmp_path)} == {"json", "input.png", "source.json", "lock"}


def _stow_body(*files: bytes, boundary: str = "whatif-boundary") -> tuple[bytes, dict]:
    parts = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    return parts + f"--{boundary}--\r\n".encode(), headers


def test_stow_rs_makes_a_job_of_each_radiograph_and_refuses_the_rest(tmp_path):
    from .conftest import stub_app  # a stub queue: the jobs are recorded, not run

    given, ct = _input_dataset(), _input_dataset()
    ct.Modality = "CT"
    body, headers = _stow_body(_file(given), _file(ct), b"not DICOM")
    app = stub_app(tmp_path, **UNLIMITED)
    with TestClient(app) as client:
        r = client.post(f"/dicomweb/studies?target={TARGET}", headers={**H, **headers}, content=body)
        assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json", r.text
        (taken,) = r.json()["00081199"]["Value"]
        assert taken["00081155"]["Value"] == [given.SOPInstanceUID]
        job = taken["00081190"]["Value"][0]
        assert client.get(job, headers=H).json()["condition"] == TARGET
        failed = r.json()["00081198"]["Value"]
        assert [f["00081155"].get("Value") for f in failed] == [[ct.SOPInstanceUID], None]
        assert "not a radiograph" in failed[0]["00000902"]["Value"][0]
        assert len(app.state.celery.sent) == 1
        # The target in a header instead; none, or no finding: 422; another media type: 415.
        r = client.post("/dicomweb/studies", headers={**H, **headers, "X-Whatif-Target": TARGET}, content=body)
        assert r.status_code == 202
        assert client.post("/dicomweb/studies", headers={**H, **headers}, content=body).status_code == 422
        r = client.post("/dicomweb/studies?target=nothing", headers={**H, **headers}, content=body)
        assert r.status_code == 422
        r = client.post(f"/dicomweb/studies?target={TARGET}", headers={**H, "Content-Type": "image/png"}, content=b"")
        assert r.status_code == 415
        body, headers = _stow_body(_file(ct))
        r = client.post(f"/dicomweb/studies?target={TARGET}", headers={**H, **headers}, content=body)
        assert r.status_code == 422 and r.json()["detail"].startswith("no instance was made into a job: the instance")


@pytest.mark.slow
def test_orthanc_sends_an_instance_by_stow_rs_and_gets_the_results_back(tmp_path, tiny_checkpoint):
    """The whole loop with a real PACS: Orthanc sends (STOW-RS to the API, target in a header), the
    job runs, and its results are stored back in the same study on that Orthanc."""
    import threading

    import requests
    import uvicorn

    from tests.helpers import serving, start_orthanc

    api_port = free_port()
    whatif = {"Url": f"http://127.0.0.1:{api_port}/dicomweb/", "HttpHeaders": {**H, "X-Whatif-Target": TARGET}}

    def orthanc(port, data_dir):
        return start_orthanc(port, data_dir, servers={"whatif": whatif})

    with serving(orthanc, tmp_path) as port:
        url = f"http://127.0.0.1:{port}/dicom-web"
        app = _linked_app(url, tiny_checkpoint, tmp_path / "blobs")
        server = uvicorn.Server(uvicorn.Config(app, port=api_port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.05)
            given = _input_dataset()
            _put(url, given)
            [instance] = requests.post(
                f"http://127.0.0.1:{port}/tools/find", json={"Level": "Instance", "Query": {}}, timeout=10
            ).json()
            started = time.monotonic()
            sent = requests.post(
                f"{url}/servers/whatif/stow", json={"Resources": [instance], "Synchronous": True}, timeout=60
            )
            assert sent.status_code == 200, sent.text
            _run_sent(app)
            found = DICOMwebClient(url).search_for_instances(study_instance_uid=given.StudyInstanceUID)
            assert len(found) == 3, found  # the input, the derived image, the report
            print(f"\nOrthanc STOW-RS to the API, results back in the study: {time.monotonic() - started:.2f} s")
        finally:
            server.should_exit = True
            thread.join(10)


class _EndlessInstance:
    """A DICOMweb server on loopback whose WADO-RS answer for any instance is `size` bytes of a
    multipart/related body, sent in 64 KiB pieces, with or without a Content-Length; it counts the
    requests and the bytes it managed to send before the client hung up."""

    def __init__(self, size: int, declare_length: bool):
        import http.server
        import threading

        outer = self
        self.requests, self.sent = 0, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
                if declare_length:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                piece = b"\0" * 65536
                try:
                    while outer.sent < size:
                        self.wfile.write(piece)
                        outer.sent += len(piece)
                except OSError:
                    pass  # the client stopped reading: what the test wants

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
def test_a_fetch_stops_at_the_upload_limit_with_a_413(tmp_path, declare_length):
    """An instance larger than WHATIF_MAX_UPLOAD_BYTES is refused while it arrives: a 413 naming the
    limit, one request (the library's retry does not download it again), nothing stored."""
    from .conftest import stub_app

    limit = 2**20
    pacs = _EndlessInstance(256 * 2**20, declare_length)  # 256 MiB on offer
    try:
        app = stub_app(tmp_path, dicomweb_url=pacs.url, max_upload_bytes=limit, **UNLIMITED)
        with TestClient(app) as client:
            started = time.monotonic()
            r = client.post("/counterfactual", headers=H, data={"target": TARGET, **_uids(_input_dataset())})
            took = time.monotonic() - started
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["type"].endswith("upload-too-large")
        assert "larger than 1.0 MiB" in body["detail"] and "WHATIF_MAX_UPLOAD_BYTES" in body["detail"]
        assert pacs.requests == 1 and not stored(tmp_path)
        time.sleep(0.2)  # the server's last write fails once the client has closed
        # Read: the limit and a chunk; sent: that and what the loopback socket buffers hold.
        assert pacs.sent < 16 * 2**20, pacs.sent
        print(
            f"\nfetch over the limit ({'Content-Length' if declare_length else 'chunked'}): 413 in {took:.2f} s, "
            f"{pacs.sent / 2**20:.1f} MiB sent of 256"
        )
    finally:
        pacs.close()
