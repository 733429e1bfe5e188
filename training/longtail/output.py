"""A `whatif augment` output directory: `augment.json` (the run's settings), `images/` and
`manifest.jsonl`, one line per counterfactual attempted, in the run's order.

The directory is a dataset the project reads (`whatif train --data DIR`,
`training.datasets.phantom.PhantomDirDataset`, and `whatif augment --data DIR` itself): each line
has `path` (null where the result was not kept), `labels`, `report` and `identity_seed` as `whatif
phantom generate` writes them, and the run's own fields: source, target, condition, seed, verdict
and its numbers, checkpoint digest, time.

Resuming: an image is written to a temporary name and renamed into place, then its line is appended
and synced, so a run stopped at any point leaves whole files only and a manifest whose complete lines
are the items done. A rerun with the same settings skips those (a last line cut short is dropped
and its item made again); a directory holding another run's manifest is refused before any work.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from model.notice import SYNTHETIC_NOTICE

from .plan import Item

HEADER = "augment.json"
MANIFEST = "manifest.jsonl"
FORMAT_VERSION = 1
# The settings that decide what a run makes: a rerun must agree on all of them to resume. `dataset`
# names the data by content where it can (`sources.dataset_id`), so that a moved directory, or one
# named by another path, is the same data; `data`, the spec as given, is kept for the reader.
RUN_KEYS = ("dataset", "size", "targets", "per_image", "seed", "optimize_seed", "keep_failed", "checkpoint_digest")


class OutputError(ValueError):
    """An output directory this run cannot write into (another run's, or not writable)."""


class OutputDir:
    def __init__(self, root: str | os.PathLike, settings: dict):
        self.root = Path(root)
        self.settings = {key: settings[key] for key in RUN_KEYS}
        self.header_settings = {"data": settings["data"], **self.settings}
        self.images = self.root / "images"
        self.manifest = self.root / MANIFEST

    def open(self) -> dict[str, dict]:
        """Check the directory is this run's (or new), write the header; the lines already done, by key."""
        header = self.root / HEADER
        if header.is_file():
            try:
                theirs = json.loads(header.read_text())
            except json.JSONDecodeError:
                raise OutputError(f"--out {self.root}: {HEADER} is not JSON; use another directory") from None
            differ = [k for k in RUN_KEYS if theirs.get("settings", {}).get(k) != self.settings[k]]
            if differ:
                raise OutputError(
                    f"--out {self.root} holds another run's manifest (it differs in {', '.join(differ)}); "
                    "use another directory, or repeat that run's settings to continue it"
                )
        elif self.manifest.exists():
            raise OutputError(
                f"--out {self.root} holds a manifest.jsonl that no `whatif augment` run wrote (a dataset?); "
                "use another directory"
            )
        elif self.root.exists() and not self.root.is_dir():
            raise OutputError(f"--out {self.root} is a file")
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            for stale in self.images.glob(".*.tmp"):  # a rename that never happened
                stale.unlink()
            if not header.is_file():
                _write_atomic(
                    header,
                    json.dumps(
                        {"format": FORMAT_VERSION, "notice": SYNTHETIC_NOTICE, "settings": self.header_settings},
                        indent=2,
                    ).encode()
                    + b"\n",
                )
        except OSError as exc:
            raise OutputError(f"--out {self.root}: cannot write there ({exc.strerror or exc})") from None
        return self._done()

    def _done(self) -> dict[str, dict]:
        if not self.manifest.exists():
            return {}
        raw = self.manifest.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):  # stopped mid-line: drop the fragment, its item is made again
            with open(self.manifest, "r+b") as fh:
                fh.truncate(len(complete))
        rows = {}
        for line in complete.decode().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
        return rows

    def record(self, item: Item, png: bytes | None, fields: dict | None, error: str | None, checkpoint: str) -> dict:
        """Write one item's result: its image (when kept) and its manifest line. Returns the line."""
        verdict = (fields or {}).get("verdict")
        # A verdict passed on an unchanged image (the judge saw the finding in the input already) adds
        # an image labelled with a finding it does not show: not kept.
        passed = bool(verdict and verdict["passed"] and fields["changed_pixels"] > 0)
        keep = png is not None and (passed or self.settings["keep_failed"])
        path = None
        if keep:
            name = f"{item.key.replace('/', '__')}.png"
            _write_atomic(self.images / name, png)
            path = f"images/{name}"
        source = item.source
        row = {
            "key": item.key,
            "id": item.key.replace("/", "__"),
            "path": path,
            "kept": keep,
            "passed": passed,
            "source": {"id": source.id, "origin": source.origin, "labels": source.labels},
            "target": item.target.text,
            "seed": item.seed,
            "labels": item.labels(),
            # the source's report and the target's condition: what the readers refine into the condition text
            "report": f"{source.report} {item.target.condition}".strip(),
            "identity_seed": source.identity,
            "verdict": verdict,
            "error": error,
            "checkpoint_digest": checkpoint,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "synthetic": True,
            **{k: v for k, v in (fields or {}).items() if k not in ("verdict", "seed")},
        }
        with open(self.manifest, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return row


def outcome(row: dict) -> str:
    """A manifest line's outcome for the summary: kept, or why not."""
    if row["error"]:
        return f"error: {row['error'].split(':')[0]}"
    if row["passed"]:
        return "kept"
    status = row["verdict"]["status"]
    if status == "passed":  # but nothing changed (`record`)
        status = "unchanged (the judge saw the finding in the input)"
    return status + (" (kept, marked)" if row["kept"] else "")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
