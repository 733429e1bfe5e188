"""The web form in real headless Chromium: upload, live progress, result side by side, the verdict
above it, the edit region drawn as a box and outlined on the result."""

import threading
import time

import pytest

from tests.helpers import free_port, require_binary


@pytest.fixture()
def live_server(tiny_checkpoint, tmp_path):
    import uvicorn

    from api.core.config import Settings
    from api.main import create_app
    from worker.celery_app import make_celery
    from worker.embedded import start_embedded_worker

    settings = Settings(
        single_machine=True,
        auth_disabled=True,
        broker_url="memory://",
        blob_dir=str(tmp_path / "blobs"),
        checkpoint=tiny_checkpoint,
    )
    celery = make_celery(settings)
    start_embedded_worker(celery)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, celery), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _launch(p, chromium):
    return p.chromium.launch(
        executable_path=chromium,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


def _above(page, upper: str, lower: str) -> bool:
    return page.evaluate(
        "([a, b]) => document.querySelector(a).getBoundingClientRect().bottom"
        " <= document.querySelector(b).getBoundingClientRect().top",
        [upper, lower],
    )


def test_form_upload_progress_result(live_server, tmp_path):
    chromium = require_binary("chromium")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from training.phantom.renderer import render

    src = tmp_path / "xray.png"
    Image.fromarray(render(12, [], 0, 256).image).save(src)
    with sync_playwright() as p:
        browser = _launch(p, chromium)
        page = browser.new_page(viewport={"width": 1150, "height": 900})
        page.goto(live_server + "/")
        assert "not for clinical use" in page.inner_text("body")
        page.set_input_files("#image", str(src))
        page.fill("#target", "moderate right pleural effusion")
        page.fill("#candidates", "2")
        page.click("#submit")
        page.wait_for_selector("#status:not([hidden])", timeout=10_000)
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert page.inner_text("#condition") == "moderate right pleural effusion"
        assert "SYNTHETIC" in page.inner_text("#result")
        for img in ("#orig", "#cf", "#diff"):
            assert page.eval_on_selector(img, "e => e.complete && e.naturalWidth > 0"), img
        assert "Identity similarity" in page.inner_text("#quality")
        assert page.inner_text("#error") == ""
        assert page.inner_text("#verdict").startswith("Verdict: ") and _above(page, "#verdict", "#cf")
        assert page.eval_on_selector_all("#candidates-list li", "els => els.length") == 2
        assert page.inner_text("#region-source") == "automatic"
        assert page.eval_on_selector("#outline", "c => c.width") > 0
        browser.close()


FAILED = {
    "status": "target not reached",
    "passed": False,
    "reason": "Pleural Effusion: the evaluation classifier gives 0.12 on the result (input 0.08, threshold 0.5)",
    "numbers": {},
}


def test_form_box_and_a_failed_verdict_in_red_above_the_image(live_server, tmp_path):
    """A box drawn on the image is sent; a failed verdict (forced here: the tiny untrained model's
    verdicts mean nothing) shows in red above the result with its reason."""
    chromium = require_binary("chromium")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from training.phantom.renderer import render

    src = tmp_path / "xray.png"
    Image.fromarray(render(12, [], 0, 256).image[:, 16:240]).save(src)  # 224 x 256

    def fail_the_verdict(route):
        response = route.fetch()
        body = response.json()
        if body.get("status") == "succeeded":
            body["result"]["verdict"] = FAILED
            body["result"]["candidates"][body["result"]["chosen"]]["verdict"] = FAILED
        route.fulfill(response=response, json=body)

    with sync_playwright() as p:
        browser = _launch(p, chromium)
        page = browser.new_page(viewport={"width": 1150, "height": 900})
        page.route("**/jobs/*", fail_the_verdict)  # the job's JSON only, not its files
        page.goto(live_server + "/")
        page.set_input_files("#image", str(src))
        page.wait_for_selector("#boxcanvas:not([hidden])", timeout=10_000)
        c = page.locator("#boxcanvas").bounding_box()
        page.mouse.move(c["x"] + 20, c["y"] + 40)  # the viewer's left: the patient's right
        page.mouse.down()
        page.mouse.move(c["x"] + 100, c["y"] + 200, steps=5)
        page.mouse.up()
        assert page.inner_text("#boxtext").startswith("box ")
        page.fill("#target", "moderate right pleural effusion")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert page.inner_text("#error") == ""
        verdict = page.inner_text("#verdict")
        assert "target not reached" in verdict and FAILED["reason"] in verdict
        assert page.eval_on_selector("#verdict", "e => getComputedStyle(e).color") == "rgb(176, 0, 32)"
        assert _above(page, "#verdict", "#cf")
        assert "target not reached" in page.inner_text("#candidates-list")
        assert page.inner_text("#region-source") == "your box"  # the box reached the worker
        browser.close()


def _dicom_file(path, rows: int, columns: int) -> None:
    """A phantom radiograph as a 12-bit DX DICOM with a patient, saved without a file extension
    (as a PACS export often is): the form must know it by the "DICM" at byte 128."""
    import numpy as np
    from PIL import Image

    from training.phantom.renderer import render

    from .test_hostile_uploads import _dataset, _file

    grey = np.asarray(Image.fromarray(render(12, [], 0, 256).image).resize((columns, rows)), dtype=np.uint16)
    ds = _dataset((grey * 16).tobytes(), rows=rows, columns=columns, PatientName="Quixandra^Velmorrow")
    path.write_bytes(_file(ds))


def test_form_previews_a_dicom_and_offers_the_dicom_downloads(live_server, tmp_path):
    """A DICOM chosen in the form is previewed as the service decodes and de-identifies it (the
    browser cannot show one), at its own size; after the job, the Original panel shows that
    preview, and the derived image and the SR are offered, each marked SYNTHETIC."""
    import os

    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    src = tmp_path / "IM0001"
    _dicom_file(src, rows=240, columns=200)
    with sync_playwright() as p:
        browser = _launch(p, chromium)
        page = browser.new_page(viewport={"width": 1150, "height": 1000})
        asked = []
        page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/preview") else None)
        page.goto(live_server + "/")
        page.set_input_files("#image", str(src))
        page.wait_for_selector("#boxcanvas:not([hidden])", timeout=30_000)
        assert len(asked) == 1
        note = page.inner_text("#preview-note")
        assert "decoded and de-identified" in note and "nothing stored" in note and "DICOM de-identified" in note
        # The canvas shows the image at its own size (under 300 pixels: not enlarged), and not a black box.
        assert page.eval_on_selector("#boxcanvas", "c => [c.width, c.height]") == [200, 240]
        lit = page.eval_on_selector(
            "#boxcanvas",
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 < 3 && v > 40)",
        )
        assert lit, "the preview is drawn"
        page.fill("#target", "moderate right pleural effusion")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert page.inner_text("#error") == ""
        # The Original panel: the preview, decoded at the DICOM's own size (no longer a broken image).
        assert page.eval_on_selector("#orig", "e => [e.complete, e.naturalWidth, e.naturalHeight]") == [True, 200, 240]
        for link, label, name in (
            ("#dl-dcm", "derived image (DICOM)", "result.dcm"),
            ("#dl-sr", "structured report (DICOM SR)", "report.dcm"),
        ):
            text = page.inner_text(link)
            assert label in text and "SYNTHETIC" in text, text
            with page.expect_download() as download:  # what a click gives the clinician: the DICOM file
                page.click(link)
            saved = download.value
            assert saved.suggested_filename.endswith(name)
            with open(saved.path(), "rb") as f:
                magic = f.read(132)[128:].decode()
            assert magic == "DICM", (link, magic)
        if os.environ.get("WHATIF_FORM_SCREENSHOT"):  # docs/web-form-dicom.png, made so
            page.screenshot(path=os.environ["WHATIF_FORM_SCREENSHOT"], full_page=True)
        browser.close()
