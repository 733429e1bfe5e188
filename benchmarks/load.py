"""Load on the service (issue 28, point 6): N clients submitting and polling against Redis and CPU workers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py --clients 100 --jobs 300 --out load.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py --clients 100 --jobs 300 --worker-nice 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py --clients 100 --jobs 300 --worker-cpus 1

Starts a redis-server (no persistence, as `tests/helpers.py` starts it), the API as
`--api-processes` uvicorn processes (`uvicorn --factory api.main:create_app --workers N`; 2 by
default, the least the k8s HPA runs, `deploy/k8s/api-hpa.yaml`; settings from `WHATIF_*` variables,
one strong random API key made for the run) and `--workers` Celery workers (`--pool=solo
--concurrency=1`, `OMP_NUM_THREADS=1`, optionally under `nice`, or with `--worker-cpus` held to
those CPUs while the API, Redis and the clients keep the others, as API pods keep CPU of their own
in k8s) on an untrained tiny checkpoint (`whatif checkpoint init --preset tiny`) and without seed
optimisation unless `--optimize-seed`, so that a job takes about a second and 300 jobs drain in
minutes on 2 cores (the workers are busy throughout either way; shorter jobs mean more submits a
second). Then `--clients` asyncio clients (httpx) each submit a 256 x 256 phantom PNG to `POST
/counterfactual`, poll `GET /jobs/{id}` every `--poll-s` (with jitter) until the job is `succeeded`
or `failed`, and submit the next, until `--jobs` jobs have been submitted. As a careful client does,
each submit carries an `Idempotency-Key`, a 429 or 503 is sent again after its `Retry-After`, and a
transport error (a kept-alive connection closed by the server as it was reused) is sent again at
once; each is counted.

Reported: submit and poll latency (p50, p95, p99, max, as the client sees it, the client's own
event loop included) while jobs run; refusals by status; jobs lost (never `succeeded` or `failed`
within `--job-timeout-s`); the time from the last submit to the last job's end (the queue's drain)
and jobs per second. Targets (issue 28): submit p99 <= 100 ms, poll p99 <= 50 ms, no job lost, the
queue drained.

Settings changed from the defaults, because one load generator is one client address with one
key: `WHATIF_JOBS_PER_MINUTE` and `WHATIF_JOBS_PER_MINUTE_PER_ADDRESS` (1e6: the defaults, 30 and
60 a minute, would refuse most of the submits, which measures the limiter, not the service) and
`WHATIF_MAX_UNFINISHED_JOBS` (`--clients` x 2: each client has one job unfinished at a time, so
the default 64 would refuse a third of them with `queue-full`). The decode pool keeps its
defaults (2 threads, 8 waiting). Prints a Markdown table; `--out` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

FINAL = ("succeeded", "failed")
TRANSPORT_TRIES = 3
TARGETS = ["moderate left pleural effusion", "small right pneumothorax", "moderate cardiomegaly"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout_s: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"load.py: {what}: a process it needs exited with {p.returncode}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"load.py: {what} did not happen within {timeout_s:.0f} s")


class Service:
    """redis-server, uvicorn and the Celery workers, as processes of their own; `stop` ends them."""

    def __init__(
        self,
        tmp: Path,
        workers: int,
        worker_nice: int,
        checkpoint: str | None,
        api_processes: int,
        worker_cpus: str | None = None,
    ):
        self.tmp, self.procs, self.names, self.logs = tmp, [], [], []
        self.worker_cpus = worker_cpus
        self.api_processes = api_processes
        self.key = secrets.token_urlsafe(32)
        self.redis_port, self.api_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.n_workers, self.worker_nice, self.checkpoint = workers, worker_nice, checkpoint

    def env(self, clients: int) -> dict:
        return {
            **os.environ,
            "PYTHONPATH": os.getcwd(),
            "OMP_NUM_THREADS": "1",
            "WHATIF_API_KEYS": json.dumps([self.key]),
            "WHATIF_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "WHATIF_BLOB_DIR": str(self.tmp / "blobs"),
            "WHATIF_CHECKPOINT": self.checkpoint,
            "WHATIF_DEVICE": "cpu",
            "WHATIF_JOBS_PER_MINUTE": "1e6",
            "WHATIF_JOBS_PER_MINUTE_PER_ADDRESS": "1e6",
            "WHATIF_MAX_UNFINISHED_JOBS": str(2 * clients),
        }

    def spawn(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        self.logs.append(log)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.names.append(name)
        return proc

    def start(self, clients: int) -> dict:
        if self.checkpoint is None:
            self.checkpoint = str(self.tmp / "tiny")
            whatif = Path(sys.executable).parent / "whatif"
            subprocess.run(
                [str(whatif), "checkpoint", "init", "--preset", "tiny", "--out", self.checkpoint],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        env = self.env(clients)
        redis_bin = shutil.which("redis-server") or sys.exit("load.py: redis-server is not installed")
        redis_args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        redis = self.spawn("redis", [redis_bin, *redis_args, "--dir", str(self.tmp)], env)
        wait_for(lambda: _redis_ping(self.redis_port), "redis-server answering PING", 20, [redis])
        t = time.monotonic()
        workers = []
        for i in range(self.n_workers):
            nice = ["nice", "-n", str(self.worker_nice)] if self.worker_nice else []
            if self.worker_cpus:
                nice = ["taskset", "-c", self.worker_cpus, *nice]
            celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo"]
            celery += ["--concurrency=1", "--loglevel=INFO", "--without-mingle", "--without-gossip", "-n", f"w{i}@%h"]
            workers.append(self.spawn(f"worker{i}", [*nice, *celery], env))
        uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1"]
        uvicorn += ["--port", str(self.api_port), "--workers", str(self.api_processes)]
        api = self.spawn("api", uvicorn, env)
        wait_for(lambda: httpx.get(self.base + "/healthz").status_code == 200, "the API answering", 60, [api])
        for i, w in enumerate(workers):
            log = self.tmp / f"worker{i}.log"
            wait_for(lambda log=log: b" ready." in log.read_bytes(), f"worker {i} ready", 120, [w])
        return {"workers_ready_s": time.monotonic() - t}

    def cpu_seconds(self) -> dict:
        """CPU seconds (user + system) each process of the service has used so far, its child
        processes included (uvicorn's `--workers` are children of the process started)."""
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}  # pid -> (parent pid, CPU ticks)
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(proc.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime

        def tree(pid: int) -> int:
            return stats.get(pid, (0, 0))[1] + sum(tree(child) for child, (ppid, _) in stats.items() if ppid == pid)

        return {name: tree(p.pid) / tick for name, p in zip(self.names, self.procs) if p.pid in stats}

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def xray_pngs(n: int = 8) -> list[bytes]:
    from training.phantom.renderer import render

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(render(5_000_000 + i, [], 0, 256).image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Load:
    """The clients' shared state: the jobs left to submit and every measurement."""

    def __init__(self, jobs: int):
        self.left = jobs
        self.submit_ms: list[float] = []
        self.poll_ms: list[float] = []
        self.refused: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.jobs: dict[str, dict] = {}  # id -> submitted, ended, status
        self.last_submit = 0.0


async def request(load: Load, send, kind: str) -> httpx.Response | None:
    """One request, timed; a 429/503 is counted and sent again after its Retry-After, a transport
    error (a kept-alive connection the server closed as it was reused) counted and sent again at once,
    up to `TRANSPORT_TRIES` times, then None."""
    tries = 0
    while True:
        t = time.perf_counter()
        try:
            r = await send()
        except httpx.TransportError as exc:
            name = f"{kind}: {type(exc).__name__}"
            load.errors[name] = load.errors.get(name, 0) + 1
            tries += 1
            if tries >= TRANSPORT_TRIES:
                return None
            continue
        ms = (time.perf_counter() - t) * 1000
        if r.status_code in (429, 503):
            name = f"{kind} {r.status_code}"
            load.refused[name] = load.refused.get(name, 0) + 1
            await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 10))
            continue
        (load.submit_ms if kind == "submit" else load.poll_ms).append(ms)
        return r


async def client(i: int, n: int, http: httpx.AsyncClient, load: Load, pngs, args) -> None:
    await asyncio.sleep(args.ramp_s * i / n)  # the clients start over `--ramp-s`, not in one instant
    rng = random.Random(i)
    while load.left > 0:
        load.left -= 1
        k = len(load.jobs)
        files = {"image": ("x.png", pngs[k % len(pngs)], "image/png")}
        data = {"target": TARGETS[k % len(TARGETS)], "seed": str(k), "optimize_seed": str(args.optimize_seed).lower()}
        headers = {"Idempotency-Key": str(uuid.uuid4())}  # a submit sent again is the same job
        r = await request(load, lambda: http.post("/counterfactual", files=files, data=data, headers=headers), "submit")
        if r is None or r.status_code != 202:
            name = f"submit answered {None if r is None else r.status_code}"
            load.errors[name] = load.errors.get(name, 0) + 1
            continue
        job = r.json()["id"]
        record = load.jobs[job] = {"submitted": time.monotonic(), "status": "queued"}
        load.last_submit = record["submitted"]
        while time.monotonic() - record["submitted"] < args.job_timeout_s:
            await asyncio.sleep(args.poll_s * rng.uniform(0.5, 1.5))
            r = await request(load, lambda: http.get(f"/jobs/{job}"), "poll")
            if r is not None and r.status_code == 200:
                record["status"] = r.json()["status"]
                if record["status"] in FINAL:
                    record["ended"] = time.monotonic()
                    break


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {"n": len(ms), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}, "max": float(a.max())}


async def run_load(base: str, key: str, args) -> dict:
    pngs = xray_pngs()
    load = Load(args.jobs)
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=60, limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(i, args.clients, http, load, pngs, args) for i in range(args.clients)))
        t_end = time.monotonic()
    ended = [j["ended"] for j in load.jobs.values() if "ended" in j]
    statuses: dict[str, int] = {}
    for j in load.jobs.values():
        statuses[j["status"]] = statuses.get(j["status"], 0) + 1
    lost = sum(1 for j in load.jobs.values() if j["status"] not in FINAL)
    return {
        "submit_ms": percentiles(load.submit_ms),
        "poll_ms": percentiles(load.poll_ms),
        "jobs_submitted": len(load.jobs),
        "statuses": statuses,
        "jobs_lost": lost,
        "refused_and_retried": load.refused,
        "errors": load.errors,
        "seconds": t_end - t0,
        "drain_s": (max(ended) - load.last_submit) if ended else None,
        "jobs_per_s": len(ended) / (max(ended) - t0) if ended else None,
        "queue_drained": lost == 0 and len(load.jobs) == args.jobs,
    }


def store_scans(blob_dir: Path, repeats: int = 5) -> dict:
    """Milliseconds (median of `repeats`, nothing else running) of the blob-store reads the API makes
    per request, over the store the run left: a queued job's `queue_position` (its poll) and `usage`
    (each new job's admission check, `api/middleware/admission.py`), both from the index
    (`worker/job_index.py`); and, for scale, what reads the whole store: every job record (`records`,
    how the queue position was counted before) and the housekeeping (`housekeep`: the purge and the
    count of bytes, in the background at most every WHATIF_HOUSEKEEPING_S)."""
    from worker.blobs import BlobStore
    from worker.jobs import queue_position

    store = BlobStore(blob_dir, 3600)
    store.usage()  # the first look counts the store; the others read the index
    records = list(store.records())

    def ms(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return float(np.median(times))

    last_id, last = max(records, key=lambda r: r[1].get("created_at", 0))
    return {
        "job_records": len(records),
        "files": sum(1 for _ in blob_dir.iterdir()),
        "records_scan_ms": ms(lambda: list(store.records())),
        "queue_position_ms": ms(lambda: queue_position(store, last_id, last)),
        "admission_ms": ms(store.usage),
        "housekeeping_ms": ms(lambda: store.housekeep(force=True)),
    }


SERVER_ROUTES = {("POST", "/counterfactual"): "submit", ("GET", "/jobs/{job_id}"): "poll"}


def server_side(base: str, processes: int, tries: int = 40) -> dict:
    """The API's own timing of the run's requests (`whatif_request_seconds`, api/metrics.py: from the
    request reaching the app to its answer, the client and the network left out), summed over the API
    processes. Each `/metrics` answer is one process's: the load has stopped, so each process's
    counts stay put, and the distinct answers over `tries` new connections are the processes'. ->
    {"submit"|"poll": {"n", "share_le_50ms", "share_le_100ms", "p99_at_most_ms"}, "processes_seen"}."""
    from prometheus_client.parser import text_string_to_metric_families

    seen = {}
    for _ in range(tries):
        snapshot = {}
        for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
            for sample in family.samples:
                route = SERVER_ROUTES.get((sample.labels.get("method"), sample.labels.get("route")))
                if route and sample.name == "whatif_request_seconds_bucket":
                    snapshot[route, float(sample.labels["le"])] = sample.value
        seen[frozenset(snapshot.items())] = snapshot
        if len(seen) >= processes:
            break
    buckets: dict = {}
    for snapshot in seen.values():
        for k, v in snapshot.items():
            buckets[k] = buckets.get(k, 0.0) + v
    out = {"processes_seen": len(seen)}
    for route in SERVER_ROUTES.values():
        cumulative = sorted((le, n) for (r, le), n in buckets.items() if r == route)
        total = cumulative[-1][1] if cumulative else 0
        if not total:
            continue
        at = dict(cumulative)
        p99 = next(le for le, n in cumulative if n >= 0.99 * total)
        out[route] = {
            "n": int(total),
            "share_le_50ms": at.get(0.05, 0) / total,
            "share_le_100ms": at.get(0.1, 0) / total,
            "p99_at_most_ms": p99 * 1000,
        }
    return out


def table(r: dict, args) -> str:
    s, p = r["submit_ms"], r["poll_ms"]
    ok = {
        "submit": s.get("p99", 1e9) <= 100,
        "poll": p.get("p99", 1e9) <= 50,
    }
    lines = [
        "| request | n | p50 ms | p95 ms | p99 ms | max ms | target (p99) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, q, limit in (("submit (POST /counterfactual)", s, 100), ("poll (GET /jobs/{id})", p, 50)):
        verdict = "met" if ok[name.split()[0]] else "missed"
        cells = [q["n"], *(f"{q.get(k, float('nan')):.1f}" for k in ("p50", "p95", "p99", "max"))]
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + f" | <= {limit} ms: {verdict} |")
    drain = f"{r['drain_s']:.1f} s" if r["drain_s"] is not None else "never"
    lines += [
        "",
        "| jobs | lost | statuses | refused, retried | drain after the last submit | jobs/s | whole run |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: |",
        f"| {r['jobs_submitted']} | {r['jobs_lost']} | {_counts(r['statuses'])} | {_counts(r['refused_and_retried'])} "
        f"| {drain} | {r['jobs_per_s'] or 0:.2f} | {r['seconds']:.0f} s |",
    ]
    if r["errors"]:
        lines.append(f"\nTransport errors (sent again): {_counts(r['errors'])}")
    if cpu := r.get("cpu_seconds"):
        share = ", ".join(f"{k} {v / r['seconds']:.2f}" for k, v in cpu.items() if v / r["seconds"] >= 0.01)
        per = cpu.get("api", 0.0) * 1000 / max(1, s["n"] + p["n"])
        lines.append(
            f"\nCPU used during the run, in cores (CPU seconds / wall seconds): {share}; "
            f"the API's CPU per request answered: {per:.1f} ms."
        )
    if server := r.get("server_side"):
        parts = [
            f"{name} {q['n']} requests, {q['share_le_50ms']:.1%} within 50 ms, {q['share_le_100ms']:.1%} within "
            f"100 ms, p99 at most {q['p99_at_most_ms']:g} ms"
            for name, q in server.items()
            if name != "processes_seen"
        ]
        lines.append(
            f"\nThe API's own timing (`whatif_request_seconds`, {server['processes_seen']} processes seen; "
            "from the request reaching the app to its answer): " + "; ".join(parts) + "."
        )
    if scans := r.get("store_scans"):
        lines.append(
            f"\nBlob-store reads per request over the {scans['job_records']} job records ({scans['files']} files) "
            f"the run left, the service stopped: a queued job's poll (`queue_position`) "
            f"{scans['queue_position_ms']:.2f} ms, a submit's admission check (`usage`) "
            f"{scans['admission_ms']:.2f} ms; for scale, reading every record {scans['records_scan_ms']:.1f} ms, "
            f"the background housekeeping {scans['housekeeping_ms']:.1f} ms."
        )
    return "\n".join(lines)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=300, help="jobs submitted in all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--api-processes", type=int, default=2, help="uvicorn --workers: API processes (the k8s HPA runs 2 or more)"
    )
    ap.add_argument("--worker-nice", type=int, default=0, help="run the workers under `nice -n` this (0: not)")
    ap.add_argument(
        "--worker-cpus",
        help="hold the workers to these CPUs (taskset -c, e.g. 1) and the API, Redis and the clients to the others",
    )
    ap.add_argument(
        "--optimize-seed", action="store_true", help="jobs with seed optimisation (default: without, about 3x shorter)"
    )
    ap.add_argument("--poll-s", type=float, default=1.0, help="a client's mean time between polls (jitter 0.5-1.5x)")
    ap.add_argument("--ramp-s", type=float, default=5.0, help="the clients start spread over this")
    ap.add_argument(
        "--job-timeout-s", type=float, default=600, help="a job unfinished this long after it was submitted is lost"
    )
    ap.add_argument("--checkpoint", help="the workers' checkpoint (default: an untrained tiny one made for the run)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, blobs)")
    ap.add_argument("--out", help="write the numbers as JSON")
    args = ap.parse_args()

    load_before = os.getloadavg()  # other processes on the machine share its cores
    tmp = Path(tempfile.mkdtemp(prefix="whatif-load-"))
    if args.worker_cpus:
        # This process (the clients) and what it starts without taskset (Redis, the API) get the rest.
        held = {int(c) for c in args.worker_cpus.split(",")}
        rest = os.sched_getaffinity(0) - held
        if not rest:
            sys.exit("load.py: --worker-cpus leaves no CPU for the API and the clients")
        os.sched_setaffinity(0, rest)
    service = Service(tmp, args.workers, args.worker_nice, args.checkpoint, args.api_processes, args.worker_cpus)
    try:
        started = service.start(args.clients)
        before, mine = service.cpu_seconds(), os.times()
        result = asyncio.run(run_load(service.base, service.key, args))
        used = {k: v - before.get(k, 0.0) for k, v in service.cpu_seconds().items()}
        used["clients"] = os.times().user - mine.user + os.times().system - mine.system
        result.update(started, load_average_after=os.getloadavg(), cpu_seconds=used)
        result["server_side"] = server_side(service.base, args.api_processes)
    finally:
        service.stop()
    try:
        result["store_scans"] = store_scans(tmp / "blobs")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    nice = f" under nice -n {args.worker_nice}" if args.worker_nice else ""
    nice += f" on CPU {args.worker_cpus} (the rest on the others)" if args.worker_cpus else ""
    print(
        f"\n`benchmarks/load.py {' '.join(sys.argv[1:])}`: {args.clients} clients, {args.jobs} jobs, "
        f"{args.workers} CPU workers{nice}, {args.api_processes} API processes, "
        f"seed optimisation {'on' if args.optimize_seed else 'off'}, "
        f"poll every {args.poll_s} s, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and "
        f"{result['load_average_after'][0]:.1f} after\n"
    )
    print(table(result, args))
    if args.keep:
        print(f"\nlogs and blobs: {tmp}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "load_average_before": load_before, **result}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
