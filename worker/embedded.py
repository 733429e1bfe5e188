"""Single-machine mode: a Celery worker in a thread of the API process, on an in-memory broker."""

from __future__ import annotations

import threading
import time

from celery import Celery


def start_embedded_worker(app: Celery, ready_timeout: float = 30.0):
    """Start a solo-pool worker consuming `app`'s queue in a daemon thread; returns the controller."""
    # Celery's execution path looks tasks up on the *current* app: make it this one.
    app.set_current()
    app.set_default()
    worker = app.WorkController(
        pool_cls="solo",
        concurrency=1,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="whatif-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and not getattr(worker, "blueprint", None):
        time.sleep(0.05)
    return worker
