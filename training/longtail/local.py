"""Making a run's counterfactuals on this machine: in this process, or in `workers` processes that
each load the model once and split the CPU's cores between them.

Results come back in the run's order whatever the number of processes (`imap`), so the manifest is
the same for any `--workers`. The processes are started with `spawn`: torch's thread pools do not
survive a fork.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator

from .plan import Item

Outcome = tuple[bytes | None, dict | None, str | None]  # (png, fields, error)
_PIPE = None  # the model of this worker process


def load_pipeline(checkpoint: str | None):
    from model.pipeline import CounterfactualPipeline

    return CounterfactualPipeline.from_pretrained(checkpoint)


def run_item(pipe, data: bytes, target: str, seed: int, optimize_seed: bool) -> Outcome:
    """One item through `model.batch_item.make_item`; an input error becomes the item's error."""
    from model.batch_item import item_error, make_item

    try:
        result = make_item(pipe, data, target, seed, optimize_seed)
    except Exception as exc:
        error = item_error(exc)
        if error is None:
            raise
        return None, None, error
    return result.png, result.fields, None


def run_local(
    items: list[Item], checkpoint: str | None, optimize_seed: bool, workers: int, pipe=None
) -> Iterator[Outcome]:
    """Each item's outcome, in order. `pipe`: a model already loaded (used when `workers` is 1)."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if not items:
        return
    if workers == 1:
        pipe = pipe or load_pipeline(checkpoint)
        for item in items:
            yield run_item(pipe, item.source.read(), item.target.text, item.seed, optimize_seed)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(checkpoint, threads)) as pool:
        # At most two items a process in flight: each holds its image's bytes (`imap` would read
        # every source image into memory before the first result).
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(_work, ((item.source.read(), item.target.text, item.seed, optimize_seed),)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _init(checkpoint: str | None, threads: int) -> None:
    global _PIPE
    import torch

    torch.set_num_threads(threads)
    _PIPE = load_pipeline(checkpoint)


def _work(job) -> Outcome:
    data, target, seed, optimize_seed = job
    return run_item(_PIPE, data, target, seed, optimize_seed)
