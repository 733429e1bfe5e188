"""Write a phantom dataset: `DIR/images/<id>.png` and `DIR/manifest.jsonl`, one case a line.

Cases are rendered in worker processes (fork-free `spawn` is not needed: the renderer uses
only numpy/scipy), written by the workers, and their manifest rows collected in index order,
so the output is byte-identical for any `--workers`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from .cases import sample_case
from .renderer import check_size

_CHUNK = 16


def _render_range(args: tuple[int, int, int, int, str]) -> list[dict]:
    seed, start, stop, size, out = args
    rows = []
    for index in range(start, stop):
        case = sample_case(seed, index)
        rel = f"images/{case.id}.png"
        Path(out, rel).write_bytes(case.render(size).png_bytes())
        rows.append(case.manifest_row(rel))
    return rows


def generate(n: int, size: int, seed: int, out: str | os.PathLike, workers: int = 1, progress: bool = True) -> Path:
    """Render `n` cases of size `size` from master seed `seed` into `out`; returns the manifest path."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    check_size(size)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to {out}: {exc.strerror or exc}") from None
    # Warm the caches (lung masks, label table) once, before workers fork and share them.
    sample_case(seed, 0).render(32)

    jobs = [(seed, start, min(start + _CHUNK, n), size, str(out)) for start in range(0, n, _CHUNK)]
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh, tqdm(total=n, unit="img", disable=not progress, desc="phantom") as bar:
        for rows in _map(jobs, workers):
            for row in rows:
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            bar.update(len(rows))
    os.replace(tmp, manifest)
    return manifest


def _map(jobs, workers: int) -> Iterator[list[dict]]:
    if workers == 1:
        yield from map(_render_range, jobs)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_render_range, jobs)
