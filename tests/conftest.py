"""Shared test settings: everything runs on the CPU with small images and fixed seeds."""

import os

import pytest

# The lung-mask and label caches are built once per machine; tests share the user's cache.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained but complete tiny checkpoint (3 DDIM steps, 3 seed-optimisation iterations)."""
    from model.pipeline import CounterfactualPipeline
    from training.centroids import compute_centroids

    pipe = CounterfactualPipeline.from_preset("tiny")
    pipe.centroids = compute_centroids(pipe, m=3)
    pipe.config["sampling"]["steps"] = 3
    pipe.config["seed_optimization"]["max_iters"] = 3
    path = tmp_path_factory.mktemp("tiny") / "tiny"
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture()
def redis_url(tmp_path):
    """A redis-server of the test's own (no persistence): its URL, without a database number."""
    from tests.helpers import free_port, start_redis

    port = free_port()
    proc = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
