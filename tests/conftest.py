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
    from tests.helpers import serving, start_redis

    with serving(start_redis, tmp_path) as port:
        yield f"redis://127.0.0.1:{port}"


@pytest.fixture()
def orthanc_url(tmp_path):
    """An Orthanc of the test's own, storage in tmp_path: its DICOMweb root."""
    from tests.helpers import serving, start_orthanc

    with serving(start_orthanc, tmp_path) as port:
        yield f"http://127.0.0.1:{port}/dicom-web"
