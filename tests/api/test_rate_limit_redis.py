"""Rate limits shared by API replicas through Redis (`api/rate_limit.py`), against a real
redis-server: two app instances on one Redis enforce one limit; a Redis that is down or hung
turns into neither a 500 nor lifted limits."""

import os
import signal
import time

import pytest
import redis
from fastapi.testclient import TestClient

from api import rate_limit
from tests.helpers import free_port, start_redis

from .conftest import KEY_A, KEY_B, png_bytes, stub_app

JOB = "/jobs/abcdefghijklmnopqrstuv"


@pytest.fixture()
def broker(tmp_path):
    port = free_port()
    proc = start_redis(port, tmp_path)
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)  # a test may leave it stopped
        proc.terminate()
        proc.wait(10)


def _replicas(tmp_path, url, n=2, **limits):
    """`n` API processes' apps on one blob store and one Redis (the stub queue: jobs are stored, never run)."""
    return [stub_app(tmp_path / "blobs", broker_url=url, **limits) for _ in range(n)]


def _post(client, key=KEY_A):
    return client.post(
        "/counterfactual",
        headers={"X-API-Key": key},
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "mild edema"},
    )


def test_replicas_on_one_redis_enforce_one_job_limit(tmp_path, broker):
    _, url = broker
    apps = _replicas(tmp_path, url, jobs_per_minute=3, jobs_per_minute_per_address=100)
    clients = [TestClient(app, client=("198.51.100.7", 4000)) for app in apps]
    codes = [_post(clients[i % 2]).status_code for i in range(6)]
    assert codes == [202, 202, 202, 429, 429, 429]  # in-process buckets would let 6 through
    refused = _post(clients[1])
    assert refused.json()["type"].endswith(":rate-limited") and 1 <= int(refused.headers["retry-after"]) <= 20
    assert _post(clients[0], KEY_B).status_code == 202  # another key: its own bucket
    assert sum(len(app.state.celery.sent) for app in apps) == 4
    # Redis holds the buckets under hashed or address names: no API key in a key's name.
    names = [k.decode() for k in redis.Redis.from_url(url).keys("*")]
    assert any(n.startswith(rate_limit.KEY_PREFIX + "jobs-by-key:") for n in names)
    assert not any(KEY_A in n or KEY_B in n for n in names)


def test_replicas_on_one_redis_enforce_one_failed_authentication_limit(tmp_path, broker):
    _, url = broker
    apps = _replicas(tmp_path, url, auth_failures_per_minute=4)
    clients = [TestClient(app, client=("198.51.100.7", 4000)) for app in apps]
    codes = [clients[i % 2].get(JOB, headers={"X-API-Key": f"wrong-{i}"}).status_code for i in range(6)]
    assert codes == [401] * 4 + [429] * 2
    other = TestClient(apps[1], client=("198.51.100.8", 4000))
    assert other.get(JOB, headers={"X-API-Key": KEY_A}).status_code == 404  # another address is not affected


def test_redis_buckets_refill_on_redis_clock(broker):
    _, url = broker
    buckets = rate_limit.RedisTokenBuckets(rate_limit.redis_link(url), "t", per_minute=120)  # 2 a second
    for _ in range(120):
        buckets.take("k")
    assert 0.4 < buckets.wait_s("k") <= 0.5
    time.sleep(0.6)
    assert buckets.wait_s("k") == 0 and buckets.wait_s("other") == 0
    ttl = redis.Redis.from_url(url).pttl(rate_limit.KEY_PREFIX + "t:k")
    assert 0 < ttl <= 61_000  # the bucket's key goes once it is full again


def test_a_redis_that_is_down_or_hung_is_no_500_and_the_limits_hold(tmp_path, broker, monkeypatch):
    proc, url = broker
    apps = _replicas(tmp_path, url, n=1, jobs_per_minute=3, jobs_per_minute_per_address=100)
    client = TestClient(apps[0], client=("198.51.100.7", 4000))
    assert _post(client).status_code == 202  # one taken in Redis (and in this process's own buckets)
    # Hung (SIGSTOP): a request waits for Redis once, REDIS_TIMEOUT_S, for all the limits (they share
    # one link); then this process's buckets, and Redis is not asked again for RETRY_REDIS_S.
    os.kill(proc.pid, signal.SIGSTOP)
    took = []
    for _ in range(2):
        started = time.monotonic()
        assert client.get(JOB, headers={"X-API-Key": KEY_A}).status_code == 404
        took.append(time.monotonic() - started)
    assert rate_limit.REDIS_TIMEOUT_S <= took[0] < rate_limit.REDIS_TIMEOUT_S + 1.0 and took[1] < took[0]
    assert [_post(client).status_code for _ in range(2)] == [202, 202]
    refused = _post(client)
    assert refused.status_code == 429 and refused.headers["retry-after"]  # the limit held: 3 a minute
    # Down (killed): the same, and no 5xx on any keyed route.
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(10)
    monkeypatch.setattr(rate_limit, "RETRY_REDIS_S", 0.0)  # ask the dead Redis on every call
    other = TestClient(stub_app(tmp_path / "blobs", broker_url=url, auth_failures_per_minute=2))
    codes = [other.get(JOB, headers={"X-API-Key": f"wrong-{i}"}).status_code for i in range(3)]
    assert codes == [401, 401, 429]
    assert other.get(JOB, headers={"X-API-Key": KEY_B}).status_code == 429  # limited address, right key
    assert client.get(JOB, headers={"X-API-Key": KEY_A}).status_code == 404


def test_single_machine_mode_keeps_the_buckets_in_the_process(tmp_path):
    from api.core.config import Settings

    local = Settings(single_machine=True, auth_disabled=True, broker_url="memory://", blob_dir=str(tmp_path))
    assert type(rate_limit.buckets(local, "x", 10)) is rate_limit.TokenBuckets
    keyed = Settings(api_keys=[KEY_A], broker_url="redis://127.0.0.1:1/0", blob_dir=str(tmp_path))
    assert type(rate_limit.buckets(keyed, "x", 10)) is rate_limit.RedisTokenBuckets
