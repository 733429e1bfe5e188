"""A blob store with a time-to-live: images travel between API and workers by id, never inside messages.

Files under one directory (a shared volume in docker compose): `<id>.<name>` blobs and
`<id>.json` metadata. Every job's files expire `ttl_s` after creation; `purge_expired()` deletes
them (the API calls it on each request, the worker after each job). Ids are 128-bit random.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_NAME = re.compile(r"^[a-z0-9_.]{1,32}$")


class BlobNotFound(KeyError):
    pass


@dataclasses.dataclass
class Usage:
    bytes: int  # every file under the root, temporary ones included
    unfinished: int  # jobs whose metadata has no finished_at (the worker sets it on success and on failure)


class BlobStore:
    def __init__(self, root: str | Path, ttl_s: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # least privilege: only the service user reads uploads
        self.ttl_s = ttl_s

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def _path(self, job_id: str, name: str) -> Path:
        if not _ID.match(job_id) or not _NAME.match(name):
            raise BlobNotFound(job_id)
        return self.root / f"{job_id}.{name}"

    def put(self, job_id: str, name: str, data: bytes) -> None:
        path = self._path(job_id, name)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get(self, job_id: str, name: str) -> bytes:
        path = self._path(job_id, name)
        if not path.is_file() or self.expired(job_id):
            raise BlobNotFound(job_id)
        return path.read_bytes()

    def put_meta(self, job_id: str, meta: dict) -> None:
        meta = {"expires_at": time.time() + self.ttl_s, **meta}
        self.put(job_id, "json", json.dumps(meta).encode())

    def get_meta(self, job_id: str) -> dict:
        path = self._path(job_id, "json")
        if not path.is_file():
            raise BlobNotFound(job_id)
        meta = json.loads(path.read_text())
        if meta.get("expires_at", 0) < time.time():
            self.delete(job_id)
            raise BlobNotFound(job_id)
        return meta

    def update_meta(self, job_id: str, **changes) -> dict:
        meta = {**self.get_meta(job_id), **changes}
        self.put(job_id, "json", json.dumps(meta).encode())
        return meta

    def expired(self, job_id: str) -> bool:
        try:
            self.get_meta(job_id)
            return False
        except BlobNotFound:
            return True

    def delete(self, job_id: str) -> None:
        if not _ID.match(job_id):
            return
        for path in self.root.glob(f"{job_id}.*"):
            path.unlink(missing_ok=True)

    def purge_expired(self) -> int:
        n = 0
        now = time.time()
        for meta in self.root.glob("*.json"):
            try:
                if json.loads(meta.read_text()).get("expires_at", 0) < now:
                    self.delete(meta.name[: -len(".json")])
                    n += 1
            except (OSError, ValueError):
                continue
        return n

    def usage(self) -> Usage:
        """What the store holds now, for the API's quota and its cap on unfinished jobs. Reads every
        file's size and every job's metadata: call `purge_expired()` first so expired jobs do not count."""
        total = unfinished = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                    if entry.name.endswith(".json") and not entry.name.startswith(".tmp-"):
                        unfinished += "finished_at" not in json.loads(Path(entry.path).read_text())
                except (OSError, ValueError):
                    continue  # deleted meanwhile, or half written
        return Usage(total, unfinished)
