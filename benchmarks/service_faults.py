"""20 jobs through each fault of issue 27, on real redis-server and Celery worker processes; prints a table.

    .venv/bin/python benchmarks/service_faults.py [--jobs 20] [--workers 2] [--heartbeat 10,30] [--only NAME]

The shipped configuration: Redis with AOF (`--appendonly yes`, `appendfsync everysec`, as
compose and k8s run it), solo-pool workers, the default heartbeat (10 s, limit 30 s). The model is
the tests' untrained tiny checkpoint (3 DDIM steps), so a job takes about a second. The API runs
in this process (the app on a test client, as the tests run it) and every state is read through
`GET /jobs/{id}`. Scenarios (`--only` picks one):

- `worker-sigkill`: `--jobs` jobs sent at once; once two run, the worker running one is killed with
  SIGKILL and a new worker started in its place.
- `redis-restart`: Redis stopped (SIGTERM, its AOF written) and started again while jobs run and wait.
- `redis-sigkill`: the same with SIGKILL (AOF `everysec`: the last second of writes may be lost).
- `redis-restart-no-aof`: Redis without persistence restarted (not the shipped configuration; the
  broker epoch sends the lost jobs again).

Per scenario: jobs `succeeded`, `failed` (each with its reason), `lost` (no record, or not finished
after `--deadline` s, its last state shown), the most seconds any job of the killed worker took to
read `retrying` after the kill, and the seconds until every job had ended.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "tWtkTrW8naNjQu1heSWRp4k9OHzWCwXn"
H = {"X-API-Key": KEY}
ENDED = ("succeeded", "failed")
SCENARIOS = ("worker-sigkill", "redis-restart", "redis-sigkill", "redis-restart-no-aof")


class RedisServer:
    """redis-server on a free port; with AOF unless `aof` is false. Keeps its data dir across restarts."""

    def __init__(self, root: Path, aof: bool):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.aof, self.proc = root, aof, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence]
        self.proc = subprocess.Popen([*args, "--dir", str(self.root)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(20)


def tiny_checkpoint(root: Path) -> str:
    """The tests' untrained tiny checkpoint (tests/conftest.py): 3 DDIM steps, 3 seed iterations."""
    from model.pipeline import CounterfactualPipeline
    from training.centroids import compute_centroids

    pipe = CounterfactualPipeline.from_preset("tiny")
    pipe.centroids = compute_centroids(pipe, m=3)
    pipe.config["sampling"]["steps"] = 3
    pipe.config["seed_optimization"]["max_iters"] = 3
    pipe.save_pretrained(root / "tiny")
    return str(root / "tiny")


class Service:
    """Workers as processes, the API in this process, on one Redis and one blob directory."""

    def __init__(self, root: Path, redis: RedisServer, checkpoint: str, heartbeat: tuple[float, float]):
        from fastapi.testclient import TestClient

        from api.core.config import Settings
        from api.main import create_app

        self.root, self.redis, self.checkpoint, self.heartbeat = root, redis, checkpoint, heartbeat
        self.workers: list[subprocess.Popen] = []
        settings = Settings(
            api_keys=[KEY],
            broker_url=redis.url,
            blob_dir=str(root / "blobs"),
            heartbeat_interval_s=heartbeat[0],
            heartbeat_timeout_s=heartbeat[1],
            jobs_per_minute=1e6,
            jobs_per_minute_per_address=1e6,
        )
        self.client = TestClient(create_app(settings))

    def worker(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "WHATIF_BROKER_URL": self.redis.url,
            "WHATIF_BLOB_DIR": str(self.root / "blobs"),
            "WHATIF_CHECKPOINT": self.checkpoint,
            "WHATIF_HEARTBEAT_INTERVAL_S": str(self.heartbeat[0]),
            "WHATIF_HEARTBEAT_TIMEOUT_S": str(self.heartbeat[1]),
            "OMP_NUM_THREADS": "1",
        }
        # As deployed (docs/service.md): one solo-pool worker a process.
        args = "worker --pool=solo --concurrency=1 --loglevel=WARNING --without-mingle --without-gossip".split()
        log = open(self.root / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 (the process keeps it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args], env=env, stdout=log, stderr=log
        )
        self.workers.append(proc)
        return proc

    def post(self, image: bytes) -> str:
        r = self.client.post(
            "/counterfactual",
            headers=H,
            files={"image": ("x.png", image, "image/png")},
            data={"target": "mild edema", "optimize_seed": "false"},
        )
        if r.status_code != 202:
            raise RuntimeError(f"POST answered {r.status_code}: {r.text}")
        return r.json()["id"]

    def states(self, jobs: list[str]) -> dict[str, dict]:
        out = {}
        for job in jobs:
            r = self.client.get(f"/jobs/{job}", headers=H)
            out[job] = r.json() if r.status_code == 200 else {"status": f"HTTP {r.status_code}"}
        return out

    def close(self) -> None:
        for proc in self.workers:
            proc.kill()
            proc.wait(20)
        self.client.close()


def run(name: str, args, root: Path, checkpoint: str, image: bytes) -> dict:
    redis = RedisServer(root, aof=name != "redis-restart-no-aof")
    redis.start()
    service = Service(root, redis, checkpoint, args.heartbeat)
    try:
        first = [service.worker() for _ in range(args.workers)]
        started = time.monotonic()
        jobs = [service.post(image) for _ in range(args.jobs)]
        # The fault, once jobs run: with one worker busy there are jobs both in flight and waiting.
        deadline = started + args.deadline
        while sum(b["status"] == "running" for b in service.states(jobs).values()) < min(2, args.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("no job started")
            time.sleep(0.05)
        time.sleep(0.3)  # into the job, past its first progress step
        was_running = [j for j, b in service.states(jobs).items() if b["status"] == "running"]
        fault_at = time.monotonic()
        if name == "worker-sigkill":
            first[0].send_signal(signal.SIGKILL)
            first[0].wait(20)
            service.worker()  # its replacement, as a supervisor (k8s, compose) starts one
        else:
            redis.stop(signal.SIGKILL if name == "redis-sigkill" else signal.SIGTERM)
            redis.start()
        to_retrying: dict[str, float] = {}
        while time.monotonic() < deadline:
            now = service.states(jobs)
            for job in was_running:
                if job not in to_retrying and now[job]["status"] == "retrying":
                    to_retrying[job] = time.monotonic() - fault_at
            if all(b["status"] in ENDED for b in now.values()):
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        final = service.states(jobs)
        store = service.client.app.state.store
        records = {j: store.get_meta(j) for j in jobs if not final[j]["status"].startswith("HTTP")}
        return {
            "scenario": name,
            "jobs": len(jobs),
            "succeeded": sum(b["status"] == "succeeded" for b in final.values()),
            "failed": [b.get("error") for b in final.values() if b["status"] == "failed"],
            "lost": [b["status"] for b in final.values() if b["status"] not in ENDED],
            "redelivered": sum(int(r.get("delivery", 1)) > 1 for r in records.values()),
            "to_retrying": max(to_retrying.values()) if to_retrying else None,
            "took": took,
        }
    finally:
        service.close()
        if redis.proc.poll() is None:
            redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--heartbeat",
        default="10,30",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        help="interval,limit in s (default the shipped 10,30)",
    )
    ap.add_argument("--deadline", type=float, default=300, help="seconds after which an unfinished job is lost")
    ap.add_argument("--only", choices=SCENARIOS, action="append")
    args = ap.parse_args()

    from PIL import Image

    from training.phantom.renderer import render

    buf = io.BytesIO()
    Image.fromarray(render(4, [], 0, 96).image).save(buf, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp))
        rows = []
        for name in args.only or SCENARIOS:
            root = Path(tmp) / name
            root.mkdir()
            row = run(name, args, root, checkpoint, buf.getvalue())
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    heartbeat = f"heartbeat {args.heartbeat[0]:g} s, limit {args.heartbeat[1]:g} s; {args.workers} workers"
    print(f"\n{heartbeat}\n")
    print("| fault | jobs | succeeded | failed | lost or stuck | sent again | kill -> retrying | all ended |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        retrying = "-" if r["to_retrying"] is None else f"{r['to_retrying']:.1f} s"
        failed = len(r["failed"]) if not r["failed"] else f"{len(r['failed'])}: {'; '.join(sorted(set(r['failed'])))}"
        lost = len(r["lost"]) if not r["lost"] else f"{len(r['lost'])}: {', '.join(r['lost'])}"
        print(
            f"| {r['scenario']} | {r['jobs']} | {r['succeeded']} | {failed} | {lost} | {r['redelivered']} "
            f"| {retrying} | {r['took']:.1f} s |"
        )


if __name__ == "__main__":
    main()
