"""The worker's model: loaded at start-up on its device, a bad device stops the worker with the reason."""

import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_worker_asked_for_cuda_without_a_gpu_does_not_start(tmp_path):
    env = {
        **os.environ,
        "WHATIF_DEVICE": "cuda",
        "WHATIF_BROKER_URL": "memory://",
        "WHATIF_BLOB_DIR": str(tmp_path),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--loglevel=WARNING"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no usable CUDA GPU" in done.stderr


@pytest.mark.parametrize(
    "setting, value, says",
    [
        ("WHATIF_PRECISION", "half", "WHATIF_PRECISION: precision must be one of"),
        ("WHATIF_BATCH_SIZE", "0", "WHATIF_BATCH_SIZE must be between 1 and 64, got 0"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_loads(tmp_path, setting, value, says):
    env = {**os.environ, setting: value, "WHATIF_BROKER_URL": "memory://", "WHATIF_BLOB_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and says in done.stderr
