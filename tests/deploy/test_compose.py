"""docker-compose.yml and Dockerfile.gpu, checked without a Docker engine."""

import os
import subprocess
from pathlib import Path

from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_complete():
    exe = require_binary("docker-compose")
    env = {**os.environ, "WHATIF_API_KEYS": '["0123456789abcdef0123"]'}
    proc = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, env=env, timeout=60
    )
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
    assert (
        subprocess.run(
            [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, env=env, timeout=60
        ).returncode
        != 0
    )


def test_dockerfile_lints_clean():
    exe = require_binary("hadolint")
    proc = subprocess.run([exe, str(ROOT / "Dockerfile.gpu")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
