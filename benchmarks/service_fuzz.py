"""Fuzz the service's OpenAPI against a real uvicorn for a long run; prints JSON.
The numbers in docs/service.md ("The error shape") come from it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/service_fuzz.py                 # >= 20,000 requests
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/service_fuzz.py --requests 2000  # a short one

The API runs in its own process (uvicorn, a stub queue: jobs are stored and never run, the rate
limits out of the way) so that its peak memory is its own (VmHWM). schemathesis generates requests
for every operation from /openapi.json, schema-valid and schema-breaking ones, and checks every
answer: no 5xx, its status documented, its body conforming to the documented schema, its content
type and headers documented. Some of the POSTs carry a real PNG and a target the refiner knows, so
jobs are made and their records and files polled too. Meanwhile a thread asks /healthz every
20 ms: its latency while the fuzzer runs is the p50 / p99 / max reported. Then the malformed
corpus (`corpus`): every file of pydicom's test data (pydicom-data's too, when installed) and
crafted bombs, each posted once as a job's image, /healthz still asked meanwhile; the API's peak
memory is taken after both.

Not checked: positive data acceptance on POST /counterfactual (a schema-valid image field holding
bytes that are no image is a 415, a target naming no finding a 422: what a schema cannot say) and
not-a-server-error on /readyz (with no broker its documented answer is 503).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import requests

KEY = "Zq7-Lm2xVt9RkP4wNb6Hs3Yd8Jf5Gc1A"


class StubQueue:
    def send_task(self, name, args, task_id):
        pass


def serve(port: int, blob_dir: str) -> None:
    """The API process: the app on a stub queue, limits that a fuzzer would otherwise hit first."""
    import uvicorn

    from api.core.config import Settings
    from api.main import create_app

    settings = Settings(
        api_keys=[KEY],
        broker_url="memory://",  # the stub queue: no Redis for the rate limits to ask either
        blob_dir=blob_dir,
        jobs_per_minute=1e9,
        jobs_per_minute_per_address=1e9,
        auth_failures_per_minute=1e9,
        max_unfinished_jobs=10**9,
        max_upload_bytes=4 * 2**20,
    )
    uvicorn.run(create_app(settings, celery=StubQueue()), host="127.0.0.1", port=port, log_level="error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Healthz(threading.Thread):
    """/healthz every `interval_s`, latencies in ms."""

    def __init__(self, base: str, interval_s: float = 0.02):
        super().__init__(daemon=True)
        self.base, self.interval_s, self.ms, self.errors = base, interval_s, [], 0
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                ok = session.get(f"{self.base}/healthz", timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            self.ms.append((time.perf_counter() - start) * 1000)
            self.errors += not ok
            time.sleep(self.interval_s)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def corpus(base: str) -> dict:
    """Each file posted once as the image of a job (uploads decode in child processes, the
    default): the statuses counted, any 5xx named by its file."""
    from pathlib import Path

    from PIL import Image
    from pydicom.data import get_testdata_files

    from tests.api.test_hostile_uploads import _deflate_bomb, _png_header_only

    files = [(Path(p).name, Path(p).read_bytes()) for p in sorted(get_testdata_files()) if Path(p).is_file()]
    ramp = (np.add.outer(np.arange(5700) // 3, np.arange(7000) // 5) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG", compress_level=9)  # 39.9 megapixels, under the cap
    files += [
        ("deflate-bomb-1GiB.dcm", _deflate_bomb(2**30)),  # about 1 MB, 1 GiB once inflated
        ("header-100000x100000.png", _png_header_only(10**5, 10**5)),
        ("ramp-7000x5700.png", buf.getvalue()),
        ("truncated.png", png()[:60]),
        ("random.bin", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("empty.dcm", b""),
    ]
    statuses: collections.Counter = collections.Counter()
    server_errors = []
    session = requests.Session()
    for name, data in files:
        r = session.post(
            f"{base}/counterfactual",
            headers={"X-API-Key": KEY},
            files={"image": (name, data, "application/octet-stream")},
            data={"target": "mild edema"},
            timeout=120,
        )
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            server_errors.append(name)
    return {"files": len(files), "statuses": dict(sorted(statuses.items())), "server_errors": server_errors}


def fuzz(base: str, target_requests: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    # The checks a schema cannot hold on some routes, as the CI test leaves them out (and why, there).
    from tests.api.test_openapi_contract import _EXCLUDED as excluded

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    session = requests.Session()
    statuses: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    sent = 0
    image = png()
    job_ids: list[str] = []

    def call(case, operation):
        nonlocal sent
        try:
            response = case.call_and_validate(
                session=session, headers={"X-API-Key": KEY}, excluded_checks=excluded.get(operation.label, [])
            )
        except (Exception, BaseExceptionGroup) as exc:  # a failed check (schemathesis' FailureGroup): count it
            name = type(exc).__name__
            failures[f"{operation.label}: {name}"] += 1
            examples.setdefault(f"{operation.label}: {name}", str(exc)[:600])
            statuses[f"{operation.label} (failed)"] += 1
        else:
            statuses[f"{operation.label} {response.status_code}"] += 1
            if operation.label == "POST /counterfactual" and response.status_code == 202:
                job_ids.append(response.json()["id"])
        sent += 1

    # Jobs that exist, so GET /jobs/{id} and the file route answer their 200s and "not ready" 404s.
    post = next(op for op in operations if op.label == "POST /counterfactual")
    targets = ["small left pleural effusion", "moderate cardiomegaly", "mild right upper zone pneumothorax"]
    for i in range(200):
        # Sent as a browser sends a file (with a file name): schemathesis sends an optional binary
        # field (`image` or the UIDs) as a bare form value, which FastAPI does not take for a file.
        r = session.post(
            f"{base}/counterfactual",
            headers={"X-API-Key": KEY},
            files={"image": ("x.png", image, "image/png")},
            data={"target": targets[i % 3], "seed": str(i)},
        )
        sent += 1
        statuses[f"{post.label} {r.status_code}"] += 1
        if r.status_code == 202:
            job_ids.append(r.json()["id"])
    job_ops = [op for op in operations if op.path.startswith("/jobs/")]
    for job_id, op in itertools.product(job_ids[:100], job_ops):
        params = {"job_id": job_id, "name": "result.png"} if "name" in op.path else {"job_id": job_id}
        call(op.Case(path_parameters=params), op)

    rounds = 0
    while sent < target_requests:
        for operation, mode in itertools.product(operations, GenerationMode):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=200,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=False,  # each round draws new requests
            )
            def run(case):
                call(case, operation)  # noqa: B023  (run() is called before the loop moves on)

            # Hypothesis prints a seed for every Unsatisfiable run: stdout is for the report only.
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    run()
                except Unsatisfiable:
                    pass  # nothing to break: a route without parameters
            if sent >= target_requests:
                break
        rounds += 1
    return {
        "requests": sent,
        "rounds": rounds,
        "jobs_made": len(job_ids),
        "failures": dict(failures),
        "failure_examples": examples,
        "answers": dict(sorted(statuses.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "BLOB_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(int(args.serve[0]), args.serve[1])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as blobs:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        api = subprocess.Popen([sys.executable, __file__, "--serve", str(port), blobs], env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit("the API did not start")
                time.sleep(0.2)
            rss_start = peak_rss_mib(api.pid)
            health = Healthz(base)
            health.start()
            start = time.monotonic()
            report = fuzz(base, args.requests)
            elapsed = time.monotonic() - start
            report["corpus"] = corpus(base)
            health.stop.set()
            health.join()
            ms = sorted(health.ms)
            report.update(
                seconds=round(elapsed, 1),
                requests_per_s=round(report["requests"] / elapsed, 1),
                api_peak_rss_mib=round(peak_rss_mib(api.pid), 1),
                api_rss_after_start_mib=round(rss_start, 1),
                healthz={
                    "polls": len(ms),
                    "not_200": health.errors,
                    "p50_ms": round(statistics.median(ms), 1),
                    "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 1),
                    "max_ms": round(ms[-1], 1),
                },
                blob_dir_mib=round(sum(os.path.getsize(os.path.join(blobs, f)) for f in os.listdir(blobs)) / 2**20, 1),
            )
        finally:
            api.terminate()
            api.wait(10)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
