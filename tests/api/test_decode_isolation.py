"""Uploads decode in child processes by default (api/decode_pool.py): a codec that holds the GIL
does not stall the event loop, one that crashes does not stop the API, and the route answers
as before."""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi.testclient import TestClient

from api.decode_pool import DecodeCrashed, DecodePool

from . import decode_probes
from .conftest import KEY_A, png_bytes, stub_app


async def _ticks_while(pool: DecodePool, seconds: float) -> float:
    """The longest gap between 10 ms ticks of the event loop while the pool holds the GIL `seconds`."""
    gaps, last = [], asyncio.get_running_loop().time()
    task = asyncio.ensure_future(pool.run(decode_probes.hold_the_gil, seconds))
    while not task.done():
        await asyncio.sleep(0.01)
        now = asyncio.get_running_loop().time()
        gaps.append(now - last)
        last = now
    await task
    return max(gaps)


@pytest.mark.slow
def test_a_decoder_holding_the_gil_stalls_threads_not_processes():
    threads, processes = DecodePool(1, 0, processes=False), DecodePool(1, 0, processes=True)
    try:
        asyncio.run(processes.run(decode_probes.pid))  # started and warm
        in_process = asyncio.run(_ticks_while(processes, 1.0))
        in_thread = asyncio.run(_ticks_while(threads, 1.0))
    finally:
        threads.close()
        processes.close()
    assert in_thread > 0.5, in_thread  # the loop waited for the regular expression
    assert in_process < 0.25, in_process  # it kept ticking


@pytest.mark.slow
def test_a_crashing_decoder_costs_its_upload_and_the_pool_starts_afresh():
    pool = DecodePool(1, 2, processes=True)
    try:
        first = asyncio.run(pool.run(decode_probes.pid))
        assert first != os.getpid()
        with pytest.raises(DecodeCrashed):
            asyncio.run(pool.run(decode_probes.crash))
        second = asyncio.run(pool.run(decode_probes.pid))
        assert second not in (first, os.getpid()) and pool.in_flight == 0
    finally:
        pool.close()


@pytest.mark.slow
def test_the_route_decodes_in_a_child_process(tmp_path):
    app = stub_app(tmp_path, decode_isolation="process")
    with TestClient(app) as client:
        r = client.post(
            "/counterfactual",
            headers={"X-API-Key": KEY_A},
            files={"image": ("x.png", png_bytes(), "image/png")},
            data={"target": "small right pneumothorax"},
        )
        assert r.status_code == 202, r.text
        bad = client.post(
            "/counterfactual",
            headers={"X-API-Key": KEY_A},
            files={"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")},
            data={"target": "small right pneumothorax"},
        )
        assert (
            bad.status_code in (415, 422) and bad.json()["type"].endswith("invalid-request") or bad.status_code == 415
        )
    assert app.state.decode_pool.in_flight == 0


@pytest.mark.slow
def test_every_decoder_is_started_before_the_first_upload():
    """`start` (the app's start-up) spawns each decode process: the first uploads do not wait for a
    spawn, and two decodes at once run in the two processes already there."""
    pool = DecodePool(2, 0, processes=True)
    try:
        asyncio.run(pool.start())
        started = set(pool._executor._processes)  # ProcessPoolExecutor's own table of its children
        assert len(started) == 2 and os.getpid() not in started

        async def two_at_once():
            return await asyncio.gather(pool.run(decode_probes.pid), pool.run(decode_probes.pid))

        assert set(asyncio.run(two_at_once())) <= started
    finally:
        pool.close()
