"""deploy/k8s: the manifests parse, wire the pieces together and keep least privilege."""

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _objects():
    kustom = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objs = [doc for f in kustom["resources"] for doc in yaml.safe_load_all((K8S / f).read_text()) if doc]
    return kustom, {(o["kind"], o["metadata"]["name"]): o for o in objs}


def _containers(objs):
    for (kind, name), o in objs.items():
        if kind in ("Deployment", "StatefulSet"):
            for c in o["spec"]["template"]["spec"]["containers"]:
                yield name, o["spec"]["template"]["spec"], c


def test_every_file_is_listed_and_every_piece_is_there():
    kustom, objs = _objects()
    assert sorted(kustom["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {
        ("Deployment", "whatif-api"),
        ("Deployment", "whatif-worker"),
        ("StatefulSet", "whatif-redis"),
        ("Service", "whatif-api"),
        ("Service", "whatif-redis"),
        ("PersistentVolumeClaim", "whatif-blobs"),
    } <= set(objs)
    # No secret is committed: API keys come from a Secret made at install time.
    assert not any(kind == "Secret" for kind, _ in objs)
    api_env = {
        e["name"]: e for e in objs[("Deployment", "whatif-api")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "secretKeyRef" in api_env["WHATIF_API_KEYS"]["valueFrom"]
    assert "--appendonly" in objs[("StatefulSet", "whatif-redis")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert objs[("PersistentVolumeClaim", "whatif-blobs")]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_least_privilege_and_resources_everywhere():
    _, objs = _objects()
    for name, pod, c in _containers(objs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert "memory" in c["resources"]["limits"] and c["resources"]["requests"], name


def test_workers_one_gpu_solo_pool_and_a_grace_period_past_the_job_limit():
    _, objs = _objects()
    pod = objs[("Deployment", "whatif-worker")]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--pool=solo" in c["args"] and "--concurrency=1" in c["args"]
    limit = int({e["name"]: e.get("value") for e in c["env"]}["WHATIF_JOB_TIME_LIMIT_S"])
    assert pod["terminationGracePeriodSeconds"] > limit
    api = objs[("Deployment", "whatif-api")]["spec"]["template"]["spec"]["containers"][0]
    assert (
        api["readinessProbe"]["httpGet"]["path"] == "/readyz" and api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert "nvidia.com/gpu" not in api["resources"]["limits"]
