"""The web form in real headless Chromium: upload, live progress, result side by side."""

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
        result_backend="cache+memory://",
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


def test_form_upload_progress_result(live_server, tmp_path):
    chromium = require_binary("chromium")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from training.phantom.renderer import render

    src = tmp_path / "xray.png"
    Image.fromarray(render(12, [], 0, 256).image).save(src)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1150, "height": 900})
        page.goto(live_server + "/")
        assert "not for clinical use" in page.inner_text("body")
        page.set_input_files("#image", str(src))
        page.fill("#target", "moderate right pleural effusion")
        page.click("#submit")
        page.wait_for_selector("#status:not([hidden])", timeout=10_000)
        page.wait_for_selector("#result:not([hidden])", timeout=120_000)
        assert page.inner_text("#condition") == "moderate right pleural effusion"
        assert "SYNTHETIC" in page.inner_text("#result")
        for img in ("#orig", "#cf", "#diff"):
            assert page.eval_on_selector(img, "e => e.complete && e.naturalWidth > 0"), img
        assert "Identity similarity" in page.inner_text("#quality")
        assert page.inner_text("#error") == ""
        browser.close()
