"""`Idempotency-Key` on POST /counterfactual: a job sent again is the job already made.

A client that lost the answer to a POST (a timeout, a dropped connection) sends it again with
the same key and gets the same job (202, the same id), nothing new stored or queued. The same key
with a different request is refused (422): it is a client's bug, and answering with the first
job would hide it.

What is stored: one file beside the job's own (`<job id>.idem_<hash>`), so it expires and is
deleted with the job. Its name is the SHA-256 of the caller's owner id and the key, so one
caller's key never finds another's job and the key itself is not kept; its content is the
request's fingerprint, a SHA-256 of the uploads' bytes and the refined parameters (the structured
findings, never the free text: two wordings refined alike are the same request).

Two requests with one key at the same moment make one job: before its work, a request claims the
key (`Claim`: a file created with O_CREAT | O_EXCL in the blob store, which every API replica
shares, so the claim holds across replicas on one filesystem, NFS v3 and later included). The
first to create it makes the job and removes the claim when it has answered, whatever the answer;
the others wait for it, looking for its job each `POLL_S`, and answer that job (202, replayed) or,
if it failed, claim the key themselves and try. A request still waiting after `WAIT_S` answers
409 `idempotency-key-in-flight` with Retry-After. A claim left by a process that died is taken
over once it is `STALE_S` old (the expiry's orphan sweep removes it after five minutes anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from .problems import KINDS, Kind

# The draft's key is a string; printable ASCII, at most this long, is what we store a hash of.
MAX_KEY_CHARS = 255
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
BLOB_PREFIX = "idem_"
CLAIM = "claim"  # the claim's file: `<key blob>.claim`, a name of the store's shape without a job record
# A second request with the key waits this long for the first's job, looking each POLL_S: the
# first decodes its upload and sends the job, seconds at most; past it 409 with Retry-After.
WAIT_S = 10.0
POLL_S = 0.05
RETRY_AFTER_S = 2
# A claim this old was left by a process that died: the work it guards takes seconds, and the
# longest of it (a decode, WHATIF_BROKER_TIMEOUT_S's retries) is far below this.
STALE_S = 120.0

# This module's refusal, registered with the others (api/problems.py), so the route documents it.
KINDS["idempotency-key-in-flight"] = Kind(
    409,
    "Idempotency-Key in use",
    "another request with this Idempotency-Key is being made into a job and did not finish within "
    f"{WAIT_S:g} s; send it again after Retry-After and get that job",
    retry_after=True,
)


def blob_name(owner: str, key: str) -> str:
    """The key's file name: 26 hex digits (104 bits) of SHA-256(owner, key), within the store's names."""
    digest = hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()
    return BLOB_PREFIX + digest[:26]


def fingerprint(image: bytes, mask: bytes | None, params: dict) -> bytes:
    """SHA-256 of what makes the job: the uploads as sent and the refined parameters."""
    h = hashlib.sha256()
    for part in (image, mask or b"", json.dumps(params, sort_keys=True).encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest().encode()


class Claim:
    """One request's exclusive claim on an idempotency key, as a file in the blob store's directory.

    `take()` creates it with O_EXCL (one creator wins, on every replica sharing the directory) and
    writes a random token into it; `release()` removes it only while it still holds that token, so
    a request whose stale claim was taken over never removes its successor's."""

    def __init__(self, root: str | Path, key_blob: str):
        self.path = Path(root) / f"{key_blob}.{CLAIM}"
        self.token: bytes | None = None

    def take(self) -> bool:
        for _ in range(2):  # a second try after taking over a stale claim
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            self.token = secrets.token_hex(16).encode()
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.token)
            return True
        return False

    def _stale(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime > STALE_S
        except FileNotFoundError:
            return False  # released meanwhile: the next O_EXCL decides

    def release(self) -> None:
        if self.token is None:
            return
        with contextlib.suppress(OSError):
            if self.path.read_bytes() == self.token:
                self.path.unlink()
        self.token = None


class InFlight(Exception):
    """Another request with the key did not make its job within `WAIT_S`."""


async def claim_or_find(claim: Claim, earlier: Callable[[], object | None], wait_s: float | None = None):
    """-> (None, the earlier request's job) when there is one; (the claim, taken, None) otherwise.

    `earlier()` looks for the job the key made (raising for the key reused with another request).
    It is looked for again once the claim is taken: the request that held it may have made the job
    and released the claim between the look and the take. `InFlight` after `wait_s` (`WAIT_S`)."""
    deadline = time.monotonic() + (WAIT_S if wait_s is None else wait_s)
    while True:
        if (job := earlier()) is not None:
            return None, job
        if claim.take():
            if (job := earlier()) is not None:
                claim.release()
                return None, job
            return claim, None
        if time.monotonic() > deadline:
            raise InFlight()
        await anyio.sleep(POLL_S)
