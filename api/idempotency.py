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

Two requests with one key at the same moment can both make a job: the key is looked up before
the upload is decoded, and stored with the job. A client retrying after a lost answer is not
that case.
"""

from __future__ import annotations

import hashlib
import json

# The draft's key is a string; printable ASCII, at most this long, is what we store a hash of.
MAX_KEY_CHARS = 255
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
BLOB_PREFIX = "idem_"


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
