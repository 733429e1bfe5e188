"""A blob store with a time-to-live: images travel between API and workers by id, never inside messages.

Files under one directory (a shared volume in docker compose): `<id>.<name>` blobs and
`<id>.json` metadata (the job record, `worker/jobs.py`). Every job's files expire `ttl_s` after
creation; `purge_expired()` deletes them (the worker after each job, the API's housekeeping at most
every `housekeeping_s`), and any file whose job has no record. Ids are 128-bit random.

What the API reads on each request does not grow with the store: a queue position, the unfinished
jobs and an idempotency key's job come from an index kept as the records are written
(`worker/job_index.py`), and the bytes held (`usage`) from the last housekeeping's count, shared by
every process through the index, plus what this process has written and deleted since.

A deleted job leaves a tombstone (`<id>.deleted`, empty) for `ORPHAN_GRACE_S`: a worker's record
update is a read and then a write, and a write that lands just after the delete would bring the
record back; with the tombstone the record reads as deleted and the writer removes it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from .job_index import INDEX_DIR, JobIndex

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_NAME = re.compile(r"^[a-z0-9_.]{1,32}$")
TMP_PREFIX = ".tmp-"
TOMBSTONE = "deleted"
# A job's lock file (`locked`): empty; deleted with the job's other files.
LOCK = "lock"
# A file without a job record is removed once it is this old: the API writes a new job's input
# before its record, and a worker's results are renamed into place a moment before it checks the
# record again (`commit`); both take well under a second.
ORPHAN_GRACE_S = 300
# A store's own writes and deletes it keeps apart (with their times) until a count includes them.
MAX_CHANGES = 4096


class BlobNotFound(KeyError):
    pass


@dataclasses.dataclass
class Usage:
    bytes: int  # every file under the root, temporary ones included
    unfinished: int  # jobs whose metadata has no finished_at (the worker sets it on success and on failure)


class BlobStore:
    """`housekeeping_s`: how old the shared count of bytes may get before `usage()` starts a new one
    (with the expiry's purge) in the background; one process at a time does it."""

    def __init__(self, root: str | Path, ttl_s: int, housekeeping_s: float = 10.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # least privilege: only the service user reads uploads
        self.ttl_s = ttl_s
        self.housekeeping_s = housekeeping_s
        self.index = JobIndex(self.root)
        # The bytes: the last housekeeping's count (from any process) and this store's own writes and
        # deletes since that count started, as (time, bytes) and their sum.
        self._lock = threading.Lock()
        self._counted: dict | None = None  # usage.json: {"bytes", "started_at"}
        self._counted_from: tuple | None = None  # which usage.json that was
        self._changes: deque[tuple[float, int]] = deque()
        self._changed = 0
        self._housekeeping = threading.Lock()  # one background housekeeping per store at a time

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def _path(self, job_id: str, name: str) -> Path:
        if not _ID.match(job_id) or not _NAME.match(name):
            raise BlobNotFound(job_id)
        return self.root / f"{job_id}.{name}"

    def put(self, job_id: str, name: str, data: bytes, findable: bool = False) -> None:
        """`findable`: `find(name)` answers this job (`name` unique to it: an idempotency key's)."""
        path = self._path(job_id, name)
        self._count(len(data) - _size(path))
        os.replace(self._temp(data), path)
        if findable:
            self.index.name(name, job_id)

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
                path = self._path(job_id, name)
                self._count(_size(tmp) - _size(path))
                os.replace(tmp, path)
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
        old = self._record(job_id)
        meta = {"expires_at": time.time() + self.ttl_s, **meta}
        self.put(job_id, "json", json.dumps(meta).encode())
        self.index.changed(job_id, old, meta)

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
        old = self.get_meta(job_id)
        meta = {**old, **changes}
        self.put(job_id, "json", json.dumps(meta).encode())
        self.index.changed(job_id, old, meta)  # before the tombstone's check: a delete racing it removes them
        if self._path(job_id, TOMBSTONE).exists():  # deleted between the read and the write
            self._unlink(self._path(job_id, "json"))
            self.index.forget(job_id)
            raise BlobNotFound(job_id)
        return meta

    @contextlib.contextmanager
    def locked(self, job_id: str, wait: bool = True):
        """Hold the job's exclusive lock (`flock` on `<id>.lock`) for a read-check-write of its record
        that must not interleave with another process's: a worker taking a queued job
        (`worker.tasks`), where two workers may look at it at once. Yields False, holding nothing, when
        `wait` is False and another process holds it. The kernel drops the lock with the process that
        held it, so a worker killed while holding it leaves nothing stale behind."""
        fd = os.open(self._path(job_id, LOCK), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # and with it the lock

    def _record(self, job_id: str) -> dict | None:
        """The record as it is, or None (none, deleted, expired, half written); deletes nothing."""
        try:
            meta = json.loads(self._path(job_id, "json").read_text())
        except (OSError, ValueError, BlobNotFound):
            return None
        if meta.get("expires_at", 0) < time.time() or self._path(job_id, TOMBSTONE).exists():
            return None
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
                self._unlink(path)
        self.index.forget(job_id)

    def _unlink(self, path: Path) -> None:
        size = _size(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return  # another process deleted it, and counts that
        self._count(-size)

    def find(self, name: str) -> str | None:
        """The unexpired job that holds a blob named `name`, written with `findable` (an idempotency
        key's: `api/idempotency.py`), or None. Such a blob is one of the job's files, so it expires and
        is deleted with the job; the index only says which job to look at."""
        if not _NAME.match(name):
            return None
        job_id = self.index.holder(name)
        if job_id is None or not _ID.match(job_id) or not self._path(job_id, name).is_file():
            return None
        return None if self.expired(job_id) else job_id

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
        return self._purge()[0]

    def _purge(self) -> tuple[int, dict[str, dict], int, float]:
        """-> (expired jobs deleted, {id: record} of the jobs left, bytes of the files left, when the
        count of bytes started: after the expired jobs' deletes, which it does not count again)."""
        n, live, total = 0, {}, 0
        now = time.time()
        for job_id, meta in list(self.records()):
            if meta.get("expires_at", 0) < now:
                self.delete(job_id)
                n += 1
            elif not self.deleted(job_id):
                live[job_id] = meta
        counted_from = time.time()
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name == INDEX_DIR:
                    continue
                job_id = entry.name.split(".", 1)[0]
                try:
                    stat = entry.stat(follow_symlinks=False)
                    if entry.name.endswith(".json") or (job_id and (self.root / f"{job_id}.json").exists()):
                        total += stat.st_size
                    elif now - stat.st_mtime > ORPHAN_GRACE_S:
                        Path(entry.path).unlink()  # not a change of this store's own: the count leaves it out
                    else:
                        total += stat.st_size
                except OSError:
                    continue
        return n, live, total, counted_from

    def housekeep(self, force: bool = False) -> bool:
        """The expiry's purge, the index set right from the records, and the store's bytes counted
        and shared through the index (`usage.json`): by one process at a time, and only if the last
        count (any process's) is `housekeeping_s` old or `force`. Reads the whole store: `usage()`
        runs it in the background. -> whether this call did it."""
        with open(self.index.lock_file(), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process (or thread) is at it
            self._adopt_count()
            counted = self._counted
            if not force and counted is not None and time.time() - counted["started_at"] < self.housekeeping_s:
                return False
            _, live, total, started = self._purge()
            self.index.reconcile(live, self._record)
            self.index.drop_names(lambda job_id, name: self._path(job_id, name).is_file(), ORPHAN_GRACE_S)
            self.index.write_usage({"bytes": total, "started_at": started})
            self._adopt_count()
        return True

    def _count(self, delta: int) -> None:
        if delta:
            with self._lock:
                self._changes.append((time.time(), delta))
                self._changed += delta
                if len(self._changes) > MAX_CHANGES:  # a store that never looks at `usage` (a worker's)
                    (_, first), (at, second) = self._changes.popleft(), self._changes.popleft()
                    self._changes.appendleft((at, first + second))  # the later time: kept, if anything, longer

    def _adopt_count(self) -> None:
        """Take up `usage.json` if another count was made; drop this store's changes from before it."""
        read = self.index.read_usage(self._counted_from)
        if read is None:
            return
        with self._lock:
            self._counted, self._counted_from = read
            while self._changes and self._changes[0][0] < self._counted["started_at"]:
                self._changed -= self._changes.popleft()[1]

    def usage(self) -> Usage:
        """What the store holds now, for the API's quota and its cap on unfinished jobs, without
        reading the store: the unexpired unfinished jobs from the index, exact for every process; the
        bytes from the last housekeeping's count plus this store's own writes and deletes since, so
        other processes' writes count from the next housekeeping (at most `housekeeping_s` later,
        started here in the background once the count is that old)."""
        self._adopt_count()
        if self._counted is None:
            self.housekeep(force=True)  # nothing counted yet: count now, once
            self._adopt_count()
        counted = self._counted or {"bytes": 0, "started_at": 0.0}
        if time.time() - counted["started_at"] >= self.housekeeping_s and self._housekeeping.acquire(blocking=False):
            threading.Thread(target=self._housekeep_in_background, name="whatif-housekeeping", daemon=True).start()
        with self._lock:
            total = counted["bytes"] + self._changed
        return Usage(max(0, total), self.index.unfinished(time.time()))

    def _housekeep_in_background(self) -> None:
        try:
            self.housekeep()
        except OSError:
            log.warning("housekeeping the blob store failed; the next look tries again", exc_info=True)
        finally:
            self._housekeeping.release()


def _size(path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0
