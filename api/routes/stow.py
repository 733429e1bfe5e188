"""POST /dicomweb/studies: STOW-RS (PS3.18 10.5) for a PACS that sends its instances here, each to
become a job with the target named in the query.

A PACS (or a DICOM router) pushing new radiographs can set the URL and its headers (X-API-Key), not
a form: so the target is `?target=...` (the access log cuts every query string: api/access_log.py)
or the header `X-Whatif-Target` (Orthanc sets headers per server, not queries). Each
`application/dicom` part of the `multipart/related` body is made into a job exactly as an upload to
`POST /counterfactual` is (`make_job`: the same limits, de-identification, linked mode). In linked
mode with `WHATIF_DICOMWEB_URL` set, the results go back to that server as for a job by UIDs. The
answer is STOW-RS's own: DICOM JSON with the instances taken (ReferencedSOPSequence, each with its
job's URL as RetrieveURL) and those refused (FailedSOPSequence, with the reason).
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.responses import JSONResponse

from ..deps import Caller, SettingsDep, StoreDep
from ..problems import KEYED, ProblemError, responses
from ..schemas import JobCreated
from .counterfactual import MAX_CANDIDATES, job_params, make_job

router = APIRouter()
# Instances one request may send: each is a job, and the job rate and queue cap count the request once.
MAX_INSTANCES = 8
DICOM_JSON = "application/dicom+json"
# FailureReason (0008,1197) codes, PS3.18 Table I.2-1 / PS3.4 Annex B.2.3.
_FAILURE = {
    "unsupported-media-type": 0xC122,  # SOP class not supported / cannot be decoded
    "upload-too-large": 0xA700,  # out of resources
    "broker-unavailable": 0xA700,
    "decoder-busy": 0xA700,
    "dicomweb-unavailable": 0xA700,
}
_CANNOT_UNDERSTAND = 0xC000

# None taken: the first refusal's problem (STOW-RS would say 409 with its FailedSOPSequence; every
# 4xx and 5xx of this service is a problem, api/problems.py).
_RESPONSES = responses(
    *KEYED,
    "bad-request",
    "rate-limited",
    "queue-full",
    "storage-full",
    "invalid-request",
    "unsupported-media-type",
    "upload-too-large",
    "broker-unavailable",
    "decoder-busy",
)
for _status, _when in (
    (200, "every instance was made into a job"),
    (202, "some instances were made into jobs, others refused (FailedSOPSequence says why)"),
):
    _RESPONSES[_status] = {
        "description": f"STOW-RS answer, {_when}: ReferencedSOPSequence (each RetrieveURL is its job), "
        "FailedSOPSequence",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    }


@router.post(
    "/dicomweb/studies",
    responses=_RESPONSES,
    response_class=Response,
    description='STOW-RS: a `multipart/related; type="application/dicom"` body of at most '
    f"{MAX_INSTANCES} DICOM instances, each made into a job for `target`",
)
async def store_instances(
    request: Request,
    owner: Caller,
    settings: SettingsDep,
    store: StoreDep,
    target: Annotated[
        str | None, Query(min_length=1, description="finding(s) wanted for every instance sent; or the header")
    ] = None,
    header_target: Annotated[
        str | None,
        Header(
            alias="X-Whatif-Target",
            min_length=1,
            description="the target as a header, for a PACS that sets headers but not the query (Orthanc's "
            "HttpHeaders)",
        ),
    ] = None,
    seed: Annotated[int, Query(ge=0, lt=2**32)] = 0,
    candidates: Annotated[int, Query(ge=1, le=MAX_CANDIDATES)] = 1,
):
    from model.refine import NoFindingRecognised, refine_request
    from model.refine.refiner import UNDERSTOOD_HELP

    if (target is None) == (header_target is None):
        raise ProblemError("invalid-request", "name the target in the query (?target=...) or in X-Whatif-Target")
    target = target or header_target
    del header_target
    try:
        refinement = refine_request(target)
    except NoFindingRecognised:
        raise ProblemError("invalid-request", f"no finding recognised in the target; {UNDERSTOOD_HELP}") from None
    del target  # only the refinement from here on, as in POST /counterfactual
    parts = multipart_related(await request.body(), request.headers.get("content-type", ""))
    if not parts:
        raise ProblemError("invalid-request", "the body holds no application/dicom part")
    if len(parts) > MAX_INSTANCES:
        raise ProblemError("invalid-request", f"at most {MAX_INSTANCES} instances a request; send the rest after")
    params = job_params(refinement, seed=seed, candidates=candidates)
    taken, failed, first = [], [], None
    for data in parts:
        sop = await anyio.to_thread.run_sync(_sop_uids, data, settings.max_inflated_bytes)
        try:
            made = await make_job(
                request,
                Response(),
                owner,
                settings,
                store,
                refinement,
                dict(params),
                data,
                None,
                None,
                None,
                from_pacs=True,
            )
        except ProblemError as exc:
            first = first or exc
            failed.append(_failed(sop, _FAILURE.get(exc.kind, _CANNOT_UNDERSTAND), exc.detail))
            continue
        if not isinstance(made, JobCreated):  # the broker is down: make_job answered its problem
            first = first or made
            failed.append(_failed(sop, _FAILURE["broker-unavailable"], "the job queue cannot be reached"))
            continue
        taken.append({**_sop(sop), "00081190": {"vr": "UR", "Value": [made.status_url]}})
    if not taken:
        if isinstance(first, ProblemError):
            raise ProblemError(first.kind, f"no instance was made into a job: {first.detail}", first.retry_after_s)
        return first  # the broker's problem, as POST /counterfactual answers it
    body: dict = {"00081199": {"vr": "SQ", "Value": taken}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    return JSONResponse(body, status_code=202 if failed else 200, media_type=DICOM_JSON)


def multipart_related(body: bytes, content_type: str) -> list[bytes]:
    """The `application/dicom` parts of a `multipart/related` body (RFC 2387), as bytes; a body of
    another type is 415, one that cannot be split 400."""
    media, _, rest = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        raise ProblemError(
            "unsupported-media-type", 'send multipart/related; type="application/dicom" (STOW-RS, PS3.18 10.5)'
        )
    params = {}
    for item in rest.split(";"):
        key, _, value = item.strip().partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    boundary = params.get("boundary", "").encode("latin-1", "replace")
    if not boundary:
        raise ProblemError("bad-request", "the multipart/related Content-Type names no boundary")
    chunks = body.split(b"--" + boundary)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ProblemError("bad-request", "the multipart/related body cannot be split at its boundary")
    parts = []
    for chunk in chunks[1:-1]:
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ProblemError("bad-request", "a part of the multipart/related body has no header end")
        kind = _header(head, b"content-type") or params.get("type", "").encode()
        if kind.split(b";")[0].strip().lower() == b"application/dicom":
            parts.append(content.removesuffix(b"\r\n"))
    return parts


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _sop_uids(data: bytes, max_inflated_bytes: int) -> tuple[str, str]:
    """The part's SOP Class and Instance UIDs for the answer, read as an upload is (bounded); empty if
    unreadable (the job's own refusal then says why)."""
    from ..dicom import read_dicom

    try:
        ds = read_dicom(data, max_inflated_bytes)
        return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        return "", ""


def _sop(sop: tuple[str, str]) -> dict:
    return {
        "00081150": {"vr": "UI", "Value": [sop[0]]} if sop[0] else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop[1]]} if sop[1] else {"vr": "UI"},
    }


def _failed(sop: tuple[str, str], reason: int, detail: str) -> dict:
    # ErrorComment (0000,0902) carries the reason in words, as the problem details would.
    return {**_sop(sop), "00081197": {"vr": "US", "Value": [reason]}, "00000902": {"vr": "LO", "Value": [detail]}}
