"""Time from upload to result through the single-machine service (what `whatif serve` runs).

    .venv/bin/python benchmarks/service.py --n 5 [--checkpoint DIR | --untrained-tiny] [--screenshot docs/web-form.png]

Starts the API with an in-process worker on a free port, posts `--n` phantom radiographs one
after another with curl-equivalent HTTP requests, and prints the median seconds from the POST to
`succeeded`. With `--screenshot`, also drives the web form in headless Chromium and saves a picture.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import threading
import time

import httpx
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--checkpoint")
    ap.add_argument("--screenshot")
    ap.add_argument(
        "--untrained-tiny", action="store_true", help="time an untrained tiny model instead of the embedded default"
    )
    args = ap.parse_args()

    import uvicorn

    from api.core.config import Settings
    from api.main import create_app
    from model.pipeline import CounterfactualPipeline, default_checkpoint_dir
    from training.centroids import compute_centroids
    from training.phantom.renderer import render
    from worker.celery_app import make_celery
    from worker.embedded import start_embedded_worker

    tmp = tempfile.mkdtemp()
    checkpoint = args.checkpoint
    if checkpoint is None and (args.untrained_tiny or not (default_checkpoint_dir() / "config.json").is_file()):
        pipe = CounterfactualPipeline.from_preset("tiny")
        pipe.centroids = compute_centroids(pipe, m=4)
        checkpoint = f"{tmp}/tiny"
        pipe.save_pretrained(checkpoint)
    settings = Settings(
        single_machine=True,
        auth_disabled=True,
        broker_url="memory://",
        blob_dir=f"{tmp}/blobs",
        checkpoint=checkpoint,
    )
    celery = make_celery(settings)
    start_embedded_worker(celery)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, celery), host="127.0.0.1", port=8799, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = "http://127.0.0.1:8799"
    times = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(args.n + 1):  # the first job loads the model: reported apart
            buf = io.BytesIO()
            Image.fromarray(render(3_000_000 + i, [], 0, 256).image).save(buf, format="PNG")
            t = time.perf_counter()
            r = client.post(
                "/counterfactual",
                files={"image": ("x.png", buf.getvalue(), "image/png")},
                data={"target": "moderate left pleural effusion", "seed": str(i)},
            )
            job = r.json()["id"]
            while client.get(f"/jobs/{job}").json()["status"] not in ("succeeded", "failed"):
                time.sleep(0.05)
            times.append(time.perf_counter() - t)
        # The real RG1 radiograph (pydicom-data, JPEG 2000 DICOM, 1955 x 1841, MONOCHROME1).
        rg1 = _rg1_bytes()
        if rg1 is not None:
            t = time.perf_counter()
            r = client.post(
                "/counterfactual",
                files={"image": ("rg1.dcm", rg1, "application/dicom")},
                data={"target": "moderate left pleural effusion"},
            )
            job = r.json()["id"]
            while (body := client.get(f"/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
                time.sleep(0.05)
            print(f"RG1 DICOM: {body['status']} in {time.perf_counter() - t:.2f} s (upload to result)")
    print(
        f"checkpoint {checkpoint or '(embedded default)'}: first job (model load) {times[0]:.2f} s; "
        f"upload to result median {statistics.median(times[1:]):.2f} s over "
        f"{args.n} jobs (min {min(times[1:]):.2f}, max {max(times[1:]):.2f})"
    )
    if args.screenshot:
        from playwright.sync_api import sync_playwright

        src = f"{tmp}/xray.png"
        Image.fromarray(render(12, [], 0, 256).image).save(src)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(base + "/")
            page.set_input_files("#image", src)
            page.fill("#target", "moderate right pleural effusion")
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            page.screenshot(path=args.screenshot, full_page=True)
            browser.close()
        print(f"wrote {args.screenshot}")
    server.should_exit = True


def _rg1_bytes() -> bytes | None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("data_store")
    if spec is None:
        return None
    return (Path(next(iter(spec.submodule_search_locations))) / "data" / "RG1_J2KR.dcm").read_bytes()


if __name__ == "__main__":
    main()
