"""An index of the job records, kept as they are written, so that a poll or a submit costs the same
whatever the blob store holds (issue 28, point 6: the API read every record for each).

The records (`<id>.json`, `worker/jobs.py`) stay the truth; the index lies beside them under
`<blob dir>/.index/` (a name no job id can take: ids have no dot), on the same volume, so every
API replica and worker reads and writes one index:

- `queued/<created_us>.<expires_us>.<id>`: an empty file for each job whose record says `queued`.
  A job's queue position is the number of these with a smaller `created_us` whose `expires_us` is
  still to come: a listing of the queued jobs only, no record read.
- `unfinished/<created_us>.<expires_us>.<id>`: one for each job whose record has no `finished_at`;
  the API's cap on unfinished jobs counts the unexpired ones.
- `names/<name>`: the id of the job holding a findable blob named `name` (an idempotency key's,
  `api/idempotency.py`), so that finding it reads one file instead of listing the store.
- `usage.json`: the bytes the store held at its last housekeeping (`BlobStore.housekeep`) and when
  that count started.

`BlobStore` changes the markers with each record it writes, after the record and before it looks
for the job's tombstone, so a delete racing the write removes them too. A marker carries its job's
expiry, so a wrong one (a process that died between the record and its marker) never counts past
the job's life, and housekeeping sets every marker right from the records meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

INDEX_DIR = ".index"
QUEUED, UNFINISHED, NAMES = "queued", "unfinished", "names"
USAGE = "usage.json"
HOUSEKEEPING_LOCK = "housekeeping.lock"
# worker.jobs.QUEUED, spelled here: worker.jobs imports the blob store, which imports this.
QUEUED_STATE = "queued"


def _us(t) -> int:
    return round(float(t) * 1e6)


def markers(job_id: str, meta: dict | None) -> dict[str, str]:
    """The markers a record calls for: {folder: name}. A record without `created_at` (none the API
    writes) is never ahead of another in the queue, as it was when positions were counted from records."""
    if meta is None:
        return {}
    created = meta.get("created_at")
    name = f"{_us(created or 0)}.{_us(meta.get('expires_at', 0))}.{job_id}"
    out = {}
    if "finished_at" not in meta:
        out[UNFINISHED] = name
    if meta.get("state") == QUEUED_STATE and created is not None:
        out[QUEUED] = name
    return out


def _parse(name: str) -> tuple[int, int, str] | None:
    try:
        created, expires, job_id = name.split(".", 2)
        return int(created), int(expires), job_id
    except ValueError:
        return None  # not a marker (a temporary file of a process that died)


class JobIndex:
    def __init__(self, store_root: Path):
        self.root = store_root / INDEX_DIR
        for folder in (QUEUED, UNFINISHED, NAMES):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # --- markers -------------------------------------------------------------------------------

    def changed(self, job_id: str, old: dict | None, new: dict | None) -> None:
        """A record went from `old` to `new` (None: none): remove the markers only `old` called for,
        make those `new` calls for. A marker both call for is left as it is."""
        before, after = markers(job_id, old), markers(job_id, new)
        for folder, name in before.items():
            if after.get(folder) != name:
                (self.root / folder / name).unlink(missing_ok=True)
        for folder, name in after.items():
            if before.get(folder) != name:
                os.close(os.open(self.root / folder / name, os.O_CREAT | os.O_WRONLY, 0o600))

    def forget(self, job_id: str) -> None:
        """Remove every marker of a job whose record is gone (deleted, expired, never sent): looked up
        by name, since the record that named them may be gone. The folders hold unfinished jobs only."""
        suffix = "." + job_id
        for folder in (QUEUED, UNFINISHED):
            for name in self._names(folder):
                if name.endswith(suffix):
                    (self.root / folder / name).unlink(missing_ok=True)

    def _names(self, folder: str) -> list[str]:
        try:
            return os.listdir(self.root / folder)
        except FileNotFoundError:
            return []

    def queued_ahead(self, job_id: str, created_at: float, now: float) -> int:
        """Unexpired jobs still queued that were created before `created_at`."""
        mine, now_us = _us(created_at), _us(now)
        n = 0
        for name in self._names(QUEUED):
            m = _parse(name)
            n += m is not None and m[2] != job_id and m[0] < mine and m[1] >= now_us
        return n

    def queued(self, now: float) -> list[str]:
        """The unexpired jobs still queued, oldest first (a worker filling a batch: `worker.tasks`)."""
        now_us = _us(now)
        found = sorted(m for name in self._names(QUEUED) if (m := _parse(name)) is not None and m[1] >= now_us)
        return [job_id for _, _, job_id in found]

    def unfinished(self, now: float) -> int:
        """Unexpired jobs whose record has no `finished_at`."""
        return len(self.unfinished_ids(now))

    def unfinished_ids(self, now: float) -> list[str]:
        """Their ids (the workers' sweep for lost jobs reads only their records: `worker.jobs.sweep`)."""
        now_us = _us(now)
        return [m[2] for name in self._names(UNFINISHED) if (m := _parse(name)) is not None and m[1] >= now_us]

    def reconcile(self, records: dict[str, dict], current) -> int:
        """Set the markers right from `records` ({id: record}, every live job's, as housekeeping read
        them). A marker that looks wrong is judged again by the record as it is now (`current(id)`:
        the record or None), so that a job written meanwhile keeps its markers. -> markers changed."""
        want = {QUEUED: set(), UNFINISHED: set()}
        for job_id, meta in records.items():
            for folder, name in markers(job_id, meta).items():
                want[folder].add(name)
        fixed = 0
        for folder, names in want.items():
            have = {n for n in self._names(folder) if _parse(n) is not None}
            for name in have ^ names:
                job_id = name.split(".", 2)[2]
                right = markers(job_id, current(job_id)).get(folder) == name
                path = self.root / folder / name
                if right and not path.exists():
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
                    fixed += 1
                elif not right and path.exists():
                    path.unlink(missing_ok=True)
                    fixed += 1
        return fixed

    # --- findable names ------------------------------------------------------------------------

    def name(self, name: str, job_id: str) -> None:
        """`name` is now the blob of `job_id` (written after the blob itself)."""
        self._write(self.root / NAMES / name, job_id.encode())

    def holder(self, name: str) -> str | None:
        """The job id last given for `name`, or None; the caller checks that the blob is there."""
        try:
            return (self.root / NAMES / name).read_text()
        except OSError:
            return None

    def drop_names(self, exists, older_than_s: float) -> None:
        """Remove each name whose blob is gone (`exists(job_id, name)` false), once it is `older_than_s`
        old: a name written a moment ago may belong to a job whose blob is being written again."""
        now = time.time()
        with os.scandir(self.root / NAMES) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > older_than_s and not exists(
                        Path(entry.path).read_text(), entry.name
                    ):
                        Path(entry.path).unlink()

    # --- the store's bytes ---------------------------------------------------------------------

    def read_usage(self, seen: tuple | None) -> tuple[dict, tuple] | None:
        """(`usage.json`, which file it was) if it was written again since `seen`, else None. Each
        write is a new file (a rename): its inode with its mtime tells it, where the mtime alone could
        be the same for two writes within the clock's tick."""
        try:
            with open(self.root / USAGE, "rb") as fh:
                stat = os.fstat(fh.fileno())
                which = (stat.st_ino, stat.st_mtime_ns)
                return None if which == seen else (json.loads(fh.read()), which)
        except (OSError, ValueError):
            return None

    def write_usage(self, usage: dict) -> None:
        self._write(self.root / USAGE, json.dumps(usage).encode())

    def lock_file(self) -> Path:
        return self.root / HOUSEKEEPING_LOCK

    def _write(self, path: Path, data: bytes) -> None:
        """Whole or not at all: a reader in another process never sees half of it."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
