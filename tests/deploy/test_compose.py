"""docker-compose.yml and Dockerfile.gpu, checked without a Docker engine."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _binary(name):
    path = shutil.which(name) or (str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; .ci/run installs it")
    pytest.skip(f"{name} not installed here")


def test_compose_file_is_valid_and_complete():
    exe = _binary("docker-compose")
    env = {**os.environ, "WHATIF_API_KEYS": '["0123456789abcdef0123"]'}
    proc = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    assert {"redis", "api", "worker", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "healthcheck" in services["redis"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and "--pool=solo" in services["worker"]["command"]
    # Without API keys the stack refuses to start rather than run open.
    env.pop("WHATIF_API_KEYS")
    assert subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, env=env, timeout=60).returncode != 0


def test_dockerfile_lints_clean():
    exe = _binary("hadolint")
    proc = subprocess.run([exe, str(ROOT / "Dockerfile.gpu")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
