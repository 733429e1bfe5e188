"""A blob store with a time-to-live: images travel between API and workers by id, never inside messages.

Files under one directory (a shared volume in docker compose): `<id>.<name>` blobs and
`<id>.json` metadata (the job record, `worker/jobs.py`). Every job's files expire `ttl_s` after
creation; `purge_expired()` deletes them (the API calls it before each new job, the worker after
each job), and any file whose job has no record. Ids are 128-bit random.

A deleted job leaves a tombstone (`<id>.deleted`, empty) for `ORPHAN_GRACE_S`: a worker's record
update is a read and then a write, and a write that lands just after the delete would bring the
record back; with the tombstone the record reads as deleted and the writer removes it again.
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
TMP_PREFIX = ".tmp-"
TOMBSTONE = "deleted"
# A file without a job record is removed once it is this old: the API writes a new job's input
# before its record, and a worker's results are renamed into place a moment before it checks the
# record again (`commit`); both take well under a second.
ORPHAN_GRACE_S = 300


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
        os.replace(self._temp(data), path)

    def _temp(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=TMP_PREFIX)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return tmp

    def commit(self, job_id: str, files: dict[str, bytes], still_wanted) -> bool:
        """Write a job's results only while its record says they are wanted (`still_wanted()`: the job
        exists and this worker still owns it). Each file is written under a temporary name and renamed;
        the check runs before the renames and again after them, and if the job was deleted in between,
        everything of the job is deleted: results of a deleted job are never left behind. -> written."""
        temps = {name: self._temp(data) for name, data in files.items()}
        try:
            if not still_wanted():
                return False
            for name, tmp in temps.items():
                os.replace(tmp, self._path(job_id, name))
            temps = {}
        finally:
            for tmp in temps.values():
                Path(tmp).unlink(missing_ok=True)
        if still_wanted():
            return True
        if self._path(job_id, TOMBSTONE).exists() or not self._path(job_id, "json").is_file():
            self.delete(job_id)  # deleted while the files were renamed into place
        return False

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
        if not path.is_file() or self._path(job_id, TOMBSTONE).exists():
            raise BlobNotFound(job_id)
        meta = json.loads(path.read_text())
        if meta.get("expires_at", 0) < time.time():
            self.delete(job_id)
            raise BlobNotFound(job_id)
        return meta

    def update_meta(self, job_id: str, **changes) -> dict:
        meta = {**self.get_meta(job_id), **changes}
        self.put(job_id, "json", json.dumps(meta).encode())
        if self._path(job_id, TOMBSTONE).exists():  # deleted between the read and the write
            self._path(job_id, "json").unlink(missing_ok=True)
            raise BlobNotFound(job_id)
        return meta

    def expired(self, job_id: str) -> bool:
        try:
            self.get_meta(job_id)
            return False
        except BlobNotFound:
            return True

    def deleted(self, job_id: str) -> bool:
        """The job was deleted (its tombstone is there; a racing record write may still be)."""
        return self._path(job_id, TOMBSTONE).exists()

    def delete(self, job_id: str) -> None:
        """Delete every file of the job, leaving its tombstone (see the module's docstring)."""
        if not _ID.match(job_id):
            return
        self._path(job_id, TOMBSTONE).touch()
        self.discard(job_id, keep=(TOMBSTONE,))

    def discard(self, job_id: str, keep: tuple[str, ...] = ()) -> None:
        """Delete every file of a job no worker has seen (never sent): no tombstone needed."""
        if not _ID.match(job_id):
            return
        for path in self.root.glob(f"{job_id}.*"):
            if path.name.split(".", 1)[1] not in keep:
                path.unlink(missing_ok=True)

    def find(self, name: str) -> str | None:
        """The unexpired job that holds a blob named `name` (an idempotency key's: `api/idempotency.py`),
        or None. Such a blob is one of the job's files, so it expires and is deleted with the job."""
        if not _NAME.match(name):
            return None
        for path in self.root.glob(f"*.{name}"):
            job_id = path.name[: -len(name) - 1]
            if _ID.match(job_id) and not self.expired(job_id):
                return job_id
        return None

    def records(self):
        """(job id, record) for every job with a record, expired ones included."""
        for path in self.root.glob("*.json"):
            job_id = path.name[: -len(".json")]
            if not _ID.match(job_id):
                continue
            try:
                yield job_id, json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # deleted meanwhile, or half written

    def purge_expired(self) -> int:
        """Delete every file of each expired job, and every file whose job has no record (a result
        written after its job was deleted, a temporary file of a process that died) once it is
        `ORPHAN_GRACE_S` old. -> the expired jobs deleted."""
        n = 0
        now = time.time()
        for job_id, meta in list(self.records()):
            if meta.get("expires_at", 0) < now:
                self.delete(job_id)
                n += 1
        with os.scandir(self.root) as entries:
            for entry in entries:
                job_id = entry.name.split(".", 1)[0]
                if entry.name.endswith(".json") or (job_id and (self.root / f"{job_id}.json").exists()):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_GRACE_S:
                        Path(entry.path).unlink()
                except OSError:
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
                    if entry.name.endswith(".json") and not entry.name.startswith(TMP_PREFIX):
                        unfinished += "finished_at" not in json.loads(Path(entry.path).read_text())
                except (OSError, ValueError):
                    continue  # deleted meanwhile, or half written
        return Usage(total, unfinished)
