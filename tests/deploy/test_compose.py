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
    assert {"redis", "api", "worker", "worker-gpu", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "healthcheck" in services["redis"]
    assert all("--pool=solo" in services[w]["command"] for w in ("worker", "worker-gpu"))
    # `docker compose up` (no profile) runs on a machine without an NVIDIA runtime: no service it
    # starts reserves a device, and its worker runs on the CPU.
    default = {name: svc for name, svc in services.items() if not svc.get("profiles")}
    assert {"redis", "api", "worker"} <= set(default)
    assert not any(svc.get("deploy", {}).get("resources", {}).get("reservations") for svc in default.values())
    assert services["worker"]["environment"]["WHATIF_DEVICE"] == "cpu"
    # The GPU worker is the `gpu` profile's: one NVIDIA GPU, and CUDA or nothing.
    assert services["worker-gpu"]["profiles"] == ["gpu"] and services["flower"]["profiles"] == ["monitoring"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["worker-gpu"]["environment"]["WHATIF_DEVICE"] == "cuda"
    # Both workers read the same queue, blobs and job time limit; the GPU's batches queued jobs.
    assert services["worker-gpu"]["environment"]["WHATIF_BATCH_SIZE"] == "4"
    cpu_env = dict(services["worker"]["environment"], WHATIF_DEVICE=None, WHATIF_BATCH_SIZE=None)
    assert cpu_env == dict(services["worker-gpu"]["environment"], WHATIF_DEVICE=None, WHATIF_BATCH_SIZE=None)
    assert services["worker"]["volumes"] == services["worker-gpu"]["volumes"] == services["api"]["volumes"]
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
