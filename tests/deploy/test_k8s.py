"""deploy/k8s: the manifests parse, wire the pieces together and keep least privilege."""

from pathlib import Path
from urllib.parse import urlsplit

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
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "nvidia.com/gpu" not in api["resources"]["limits"]


def _env(container) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_keda_scales_the_workers_from_zero_on_the_celery_queue():
    from worker.celery_app import make_celery

    _, objs = _objects()
    scaled = objs[("ScaledObject", "whatif-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "whatif-worker"
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 2
    # KEDA owns the replica count: a count in the Deployment would be put back by every apply.
    worker = objs[("Deployment", "whatif-worker")]
    assert "replicas" not in worker["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    # The list Celery's Redis transport pushes jobs onto is the queue's name; the broker is the workers'.
    celery = make_celery()
    assert not celery.conf.task_routes and meta["listName"] == celery.conf.task_default_queue
    pod = worker["spec"]["template"]["spec"]
    broker = urlsplit(_env(pod["containers"][0])["WHATIF_BROKER_URL"])
    assert meta["address"] == broker.netloc == "whatif-redis:6379"
    assert int(meta.get("databaseIndex", 0)) == int(broker.path.strip("/") or 0)
    assert meta["listLength"] == "1"  # one solo-pool worker a waiting job
    assert ("Service", broker.hostname) in objs


def test_keda_never_removes_a_worker_in_the_middle_of_a_job():
    _, objs = _objects()
    spec = objs[("ScaledObject", "whatif-worker")]["spec"]
    pod = objs[("Deployment", "whatif-worker")]["spec"]["template"]["spec"]
    limit = int(_env(pod["containers"][0])["WHATIF_JOB_TIME_LIMIT_S"])
    # To 0: the last job left the list at most this long ago, and has finished (or timed out).
    assert spec["cooldownPeriod"] >= pod["terminationGracePeriodSeconds"] > limit
    # From N down to 1 (the HPA KEDA makes): busy workers are kept for a job's length.
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= limit


def test_api_ready_without_workers_when_they_scale_to_zero():
    # /readyz is 503 with no worker; an API unready for that takes no job, so with workers at 0
    # the queue would stay empty and KEDA would never start one.
    _, objs = _objects()
    assert objs[("ScaledObject", "whatif-worker")]["spec"]["minReplicaCount"] == 0
    api = objs[("Deployment", "whatif-api")]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_hpa_scales_the_api_on_cpu_against_its_request():
    _, objs = _objects()
    hpa = objs[("HorizontalPodAutoscaler", "whatif-api")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "whatif-api"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    deployment = objs[("Deployment", "whatif-api")]
    assert "replicas" not in deployment["spec"]
    # Utilisation is a share of the request: without one the HPA cannot scale.
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        assert c["resources"]["requests"]["cpu"], c["name"]
