"""Does an upload that decodes stall the API? `/healthz` latency while five RG1 DICOMs (1841 x 1955,
JPEG 2000, whose decoder holds the GIL) are posted at once, with the decode pool in threads and in
processes (`WHATIF_DECODE_ISOLATION`, api/decode_pool.py). The numbers in docs/service.md ("The
decode pool") come from it:

    .venv/bin/python benchmarks/decode_stall.py

One uvicorn process on 127.0.0.1, a memory broker (jobs are queued, never run), /healthz every
20 ms from a thread. Prints a Markdown table; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from pydicom.data import get_testdata_file


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(isolation: str, uploads: int) -> dict:
    key, port = secrets.token_urlsafe(32), _port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "WHATIF_API_KEYS": json.dumps([key]),
            "WHATIF_BROKER_URL": "memory://",
            "WHATIF_BLOB_DIR": tmp,
            "WHATIF_DECODE_ISOLATION": isolation,
            "WHATIF_JOBS_PER_MINUTE": "1e6",
        }
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", str(port)]
        api = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    if httpx.get(base + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            data = open(get_testdata_file("RG1_J2KR.dcm"), "rb").read()

            def post(_):
                t = time.perf_counter()
                r = httpx.post(
                    base + "/counterfactual",
                    headers={"X-API-Key": key},
                    files={"image": ("rg1.dcm", data, "application/dicom")},
                    data={"target": "small left pleural effusion"},
                    timeout=120,
                )
                return r.status_code, time.perf_counter() - t

            post(0)  # warm: the decoders imported, the pool's processes started
            latencies, done = [], threading.Event()

            def poll():
                with httpx.Client(base_url=base) as client:
                    while not done.is_set():
                        t = time.perf_counter()
                        client.get("/healthz", timeout=60)
                        latencies.append(time.perf_counter() - t)
                        time.sleep(0.02)

            poller = threading.Thread(target=poll)
            poller.start()
            with ThreadPoolExecutor(uploads) as ex:
                answers = list(ex.map(post, range(uploads)))
            done.set()
            poller.join()
        finally:
            api.terminate()
            api.wait(20)
    ms = sorted(v * 1000 for v in latencies)
    return {
        "isolation": isolation,
        "statuses": sorted({s for s, _ in answers}),
        "last_upload_s": max(t for _, t in answers),
        "healthz_p50_ms": statistics.median(ms),
        "healthz_max_ms": ms[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [measure(mode, args.uploads) for mode in ("thread", "process")]
    print(f"{os.cpu_count()} CPU cores, {args.uploads} RG1 uploads at once\n")
    print("| decode pool | statuses | last upload answered (s) | /healthz p50 (ms) | /healthz max (ms) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['isolation']} | {r['statuses']} | {r['last_upload_s']:.1f} | {r['healthz_p50_ms']:.0f} "
            f"| {r['healthz_max_ms']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
