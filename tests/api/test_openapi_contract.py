"""The OpenAPI tells the truth: schemathesis fuzzes every operation from /openapi.json, in process
on a stub queue, and checks each answer against it (status documented, body conforming to its
schema, content type documented, headers, no 5xx). A bounded run for CI; the long one is
`benchmarks/service_fuzz.py`."""

import itertools
import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .conftest import KEY_A, UNLIMITED, stub_app

# Examples per operation and mode (schema-valid, schema-breaking): seven operations in about 12 s
# on the loaded 2-core machine (25: 5 s). WHATIF_FUZZ_EXAMPLES sets it.
EXAMPLES = int(os.environ.get("WHATIF_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    app = stub_app(tmp_path_factory.mktemp("blobs"), **UNLIMITED)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# A schema-valid POST /counterfactual is still refused when its bytes are not an image (415) or its
# target names no finding (422): what the schema cannot say. /readyz on the stub queue has no broker,
# so its documented 503 is the right answer. Every other check runs on them. POST /dicomweb/studies
# (STOW-RS) takes a multipart/related body the schema leaves undescribed: without one it is 415.
# POST /preview, as POST /counterfactual, refuses schema-valid bytes that are no image (415).
_EXCLUDED = {
    "POST /counterfactual": [positive_data_acceptance],
    "POST /preview": [positive_data_acceptance],
    "POST /dicomweb/studies": [positive_data_acceptance],
    "GET /readyz": [not_a_server_error],
}


def test_every_answer_is_documented(api_schema):
    # Each operation under its own hypothesis run (schemathesis's pytest plugin does not load on pytest 9).
    # Schema-valid requests, and requests that break the schema (a field of the wrong type, a
    # header too long): both must be answered as documented.
    for result, mode in itertools.product(api_schema.get_all_operations(), GenerationMode):
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def answers_as_documented(case):
            case.call_and_validate(headers={"X-API-Key": KEY_A}, excluded_checks=_EXCLUDED.get(operation.label, []))

        try:
            answers_as_documented()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break: a route without parameters


def test_every_error_is_a_problem_with_a_detail(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        answers = [
            client.get("/jobs/nope"),  # 401
            client.get("/jobs/nope", headers={"X-API-Key": KEY_A}),  # 404
            client.get("/jobs/nope/x.txt", headers={"X-API-Key": KEY_A}),  # 404
            client.post("/counterfactual", headers={"X-API-Key": KEY_A}),  # 422, fields
            client.put("/jobs/nope", headers={"X-API-Key": KEY_A}),  # 405
        ]
    for r in answers:
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json", r.text
        assert body["status"] == r.status_code and isinstance(body["detail"], str) and body["detail"], r.text
        assert body["type"].startswith("urn:whatif-cxr:problem:"), r.text
    assert answers[0].headers["www-authenticate"] == "X-API-Key"
    # `image` is optional (a job may name a DICOMweb instance instead): the target is what is missing.
    assert answers[3].json()["errors"][0] == {"loc": ["body", "target"], "msg": "Field required", "type": "missing"}
    assert answers[4].headers["allow"] == "DELETE, GET"  # both routes of the path, not the first matched


def test_every_route_documents_its_statuses():
    from api.main import create_app  # noqa: F401  (the schema is the app's)

    app = stub_app("/tmp/whatif-openapi-doc-test")
    spec = app.openapi()
    post = spec["paths"]["/counterfactual"]["post"]["responses"]
    assert {"202", "400", "401", "403", "413", "415", "421", "422", "429", "500", "503", "507"} <= set(post)
    preview = spec["paths"]["/preview"]["post"]["responses"]
    assert {"200", "400", "401", "403", "413", "415", "421", "422", "429", "500", "503"} <= set(preview)
    assert preview["200"]["content"].keys() == {"image/png"} and "preview-rate-limited" in preview["429"]["description"]
    for path in ("/jobs/{job_id}", "/jobs/{job_id}/{name}"):
        assert {"200", "401", "404", "429"} <= set(spec["paths"][path]["get"]["responses"])
    assert spec["paths"]["/jobs/{job_id}/{name}"]["get"]["responses"]["200"]["content"].keys() == {
        "image/png",
        "application/dicom",
    }
    for ops in spec["paths"].values():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400 and status != "503" or status == "503" and "readyz" not in op["operationId"]:
                    assert list(answer["content"]) == ["application/problem+json"], (op["operationId"], status)
