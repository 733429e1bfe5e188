"""`whatif augment --broker`: the items go to a real Celery worker process through a real
redis-server, and come back equal to a local run's; a fleet that cannot answer stops the run with
the reason, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port
from training.longtail.broker import BrokerError
from training.longtail.run import AugmentOptions, augment

pytestmark = pytest.mark.slow
VOLATILE = ("time", "seconds")


def _worker(redis_url: str, checkpoint: str, tmp_path) -> subprocess.Popen:
    env = {
        **os.environ,
        "WHATIF_BROKER_URL": redis_url,
        "WHATIF_BLOB_DIR": str(tmp_path / "blobs"),
        "WHATIF_CHECKPOINT": checkpoint,
        "OMP_NUM_THREADS": "1",
    }
    args = ["worker", "--pool=solo", "--concurrency=1", "--loglevel=WARNING", "--without-mingle", "--without-gossip"]
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _opts(out, checkpoint, **kw) -> AugmentOptions:
    base = dict(data="phantom:3:21", targets="Pneumothorax,Lung Lesion", out=str(out), checkpoint=checkpoint)
    return AugmentOptions(**{**base, "keep_failed": True, "progress": False, **kw})


def _stable(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_the_workers_make_what_this_machine_makes(redis_url, tiny_checkpoint, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    augment(_opts(here, tiny_checkpoint))
    worker = _worker(f"{redis_url}/0", tiny_checkpoint, tmp_path)
    try:
        summary = augment(_opts(there, tiny_checkpoint, broker=f"{redis_url}/0", window=3, timeout_s=120))
    finally:
        _stop(worker)
    assert summary.made == len(_stable(here)) > 0
    assert _stable(there) == _stable(here)  # the same items, seeds, verdicts, in the same order
    for p in (here / "images").iterdir():
        assert (there / "images" / p.name).read_bytes() == p.read_bytes()


def test_a_fleet_that_cannot_answer_stops_the_run_with_the_reason(redis_url, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(BrokerError, match="no result from the workers for 3 s"):  # nobody listens
        augment(_opts(out, tiny_checkpoint, broker=f"{redis_url}/0", timeout_s=3))
    assert (out / "augment.json").is_file() and not (out / "manifest.jsonl").exists()

    other = tmp_path / "other"  # a worker with another model answers, and the run stops at once
    subprocess.run(
        [sys.executable, "-m", "whatif", "checkpoint", "init", "--preset", "tiny", "--seed", "1", "--out", str(other)],
        check=True,
        capture_output=True,
    )
    worker = _worker(f"{redis_url}/0", str(other), tmp_path)
    try:
        with pytest.raises(BrokerError, match="wrong checkpoint: this worker runs"):
            augment(_opts(out, tiny_checkpoint, broker=f"{redis_url}/0", timeout_s=120))
    finally:
        _stop(worker)
    nowhere = tmp_path / "nowhere"
    with pytest.raises(BrokerError, match="cannot reach Redis"):  # before the output directory is made
        augment(_opts(nowhere, tiny_checkpoint, broker=f"redis://127.0.0.1:{free_port()}/0"))
    assert not nowhere.exists()
