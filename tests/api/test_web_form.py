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
