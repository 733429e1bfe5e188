"""Who may use the API, and whether a new job may start: decided from the headers alone.

FastAPI reads a route's whole body before it runs the route's dependencies, so a check there
comes after a 64 MiB upload has been spooled. Here, before the body is read:

1. The API key (`X-API-Key`) of every route but the public ones. A client address that sent
   more than `auth_failures_per_minute` missing or unknown keys gets 429 for every request
   until its bucket refills, a right key included: otherwise the limit would not slow a search
   for a key. The owner id (the key's SHA-256) goes to the route in the scope; in local mode it
   is "local" (`local_only` has checked the connection).
2. For `POST /counterfactual`: the job rate of the key and of the client address (429), the
   jobs not yet finished against `max_unfinished_jobs` (429) and the bytes under the blob
   directory against `blob_quota_bytes` (507). For `POST /preview`: its own buckets of the
   same rates (429); it stores nothing.

The cap and the quota are read from the blob store (shared by every API replica), without reading
the store (`BlobStore.usage`): the unfinished jobs from its index, exact; the bytes from a count
at most `WHATIF_HOUSEKEEPING_S` old (one replica makes it in the background, purging the expired
jobs first) plus this process's own writes and deletes since. Uploads that pass the check at the
same moment can overshoot the cap by at most the uploads decoding at once (`WHATIF_DECODE_THREADS`
+ `WHATIF_DECODE_QUEUE`) per replica; the quota also by what other replicas and the workers wrote
since the last count. The rate limits are in Redis with a Redis
broker, shared by every replica, else in this process's memory (`api/rate_limit.py`). The client
address is the connection's peer: behind a proxy, run uvicorn with `--proxy-headers
--forwarded-allow-ips=<the proxy>` so that it is the real client.
"""

from __future__ import annotations

import hashlib
import hmac
import math

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.blobs import BlobStore

from .. import rate_limit
from ..core.config import Settings
from ..problems import problem

OWNER = "whatif.owner"  # the scope key `api.deps.caller` reads
PUBLIC = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json"})
# Routes that make jobs; a STOW-RS request (api/routes/stow.py) makes up to 8, and counts as one.
JOB_ROUTES = frozenset({("POST", "/counterfactual"), ("POST", "/dicomweb/studies")})
# Routes that decode an upload without making a job (the web form's preview, api/routes/web.py): a
# decode costs what a job's does, so they have buckets of the job rates, their own so that a
# preview does not spend the job it comes before. The queue and the quota do not apply: nothing is stored.
PREVIEW_ROUTES = frozenset({("POST", "/preview")})
# A job takes seconds to minutes; a client refused because the queue is full may try again this soon.
QUEUE_RETRY_AFTER_S = 10


class Admission:
    def __init__(self, app: ASGIApp, settings: Settings, store: BlobStore):
        self.app, self.settings, self.store = app, settings, store
        # In Redis with a Redis broker, shared by every replica; in this process in single-machine mode.
        self.auth_failures = rate_limit.buckets(settings, "auth-failures", settings.auth_failures_per_minute)
        self.jobs_by_key = rate_limit.buckets(settings, "jobs-by-key", settings.jobs_per_minute)
        self.jobs_by_address = rate_limit.buckets(settings, "jobs-by-address", settings.jobs_per_minute_per_address)
        self.previews_by_key = rate_limit.buckets(settings, "previews-by-key", settings.jobs_per_minute)
        self.previews_by_address = rate_limit.buckets(
            settings, "previews-by-address", settings.jobs_per_minute_per_address
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in PUBLIC:
            return await self.app(scope, receive, send)
        client = scope.get("client")
        address = client[0] if client else "unknown"
        owner, refusal = self._authenticate(scope, address)
        if refusal is None and (scope["method"], _route_path(scope)) in JOB_ROUTES:
            refusal = await self._admit_job(owner, address)
        elif refusal is None and (scope["method"], _route_path(scope)) in PREVIEW_ROUTES:
            refusal = self._admit_preview(owner, address)
        if refusal is not None:
            return await refusal(scope, receive, send)
        scope[OWNER] = owner
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, address: str):
        """-> (owner id, None) or (None, the refusal)."""
        if self.settings.auth_disabled:
            return "local", None
        if wait := self.auth_failures.wait_s(address):
            return None, problem(
                "auth-rate-limited",
                f"too many missing or unknown API keys from this address; try again in {math.ceil(wait)} s",
                retry_after_s=wait,
            )
        presented = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
        for key in self.settings.api_keys:
            # Constant time per key: the time taken reveals no key's prefix.
            if presented and hmac.compare_digest(presented, key.get_secret_value().encode()):
                return hashlib.sha256(presented).hexdigest(), None
        self.auth_failures.take(address)
        return None, problem("unauthorized", "missing or unknown X-API-Key")

    def _too_soon(self, by_key, by_address, owner: str, address: str, kind: str, what: str):
        """The rate-limit refusal (`kind`, Retry-After) if either bucket is empty, else None; `what`
        names the work in its text ("jobs are created")."""
        s = self.settings
        wait = max(by_key.wait_s(owner), by_address.wait_s(address))
        if not wait:
            return None
        return problem(
            kind,
            f"{what} at most {s.jobs_per_minute:g} a minute per API key and "
            f"{s.jobs_per_minute_per_address:g} per client address; try again in {math.ceil(wait)} s",
            retry_after_s=wait,
        )

    async def _admit_job(self, owner: str, address: str):
        s = self.settings
        by_key, by_address = self.jobs_by_key, self.jobs_by_address
        refusal = self._too_soon(by_key, by_address, owner, address, "rate-limited", "jobs are created")
        if refusal is not None:
            return refusal
        usage = await anyio.to_thread.run_sync(self.store.usage)  # file-system calls: off the event loop
        if usage.unfinished >= s.max_unfinished_jobs:
            return problem(
                "queue-full",
                f"{usage.unfinished} jobs are queued or running, the most this service takes "
                f"({s.max_unfinished_jobs}); try again when some have finished",
                retry_after_s=QUEUE_RETRY_AFTER_S,
            )
        if usage.bytes >= s.blob_quota_bytes:
            return problem(
                "storage-full",
                f"the stored uploads and results take {usage.bytes / 2**20:.0f} MiB, the service's quota "
                f"({s.blob_quota_bytes / 2**20:.0f} MiB); they expire {s.blob_ttl_s} s after their job was "
                "created, or when their jobs are deleted",
            )
        self.jobs_by_key.take(owner)
        self.jobs_by_address.take(address)
        return None

    def _admit_preview(self, owner: str, address: str):
        by_key, by_address = self.previews_by_key, self.previews_by_address
        refusal = self._too_soon(by_key, by_address, owner, address, "preview-rate-limited", "previews are made")
        if refusal is not None:
            return refusal
        self.previews_by_key.take(owner)
        self.previews_by_address.take(address)
        return None


def _route_path(scope: Scope) -> str:
    """The path as the router matches it: without the root path a proxy mounts the app under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
