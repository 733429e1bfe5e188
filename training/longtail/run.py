"""`whatif augment`: a dataset's images -> counterfactuals with the requested findings, as a dataset.

Everything the user can get wrong (the targets, the dataset, the output directory, the checkpoint,
the broker) is checked before the first counterfactual is made.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .broker import connect, run_broker
from .local import run_local
from .output import OutputDir, outcome
from .plan import parse_targets, plan
from .sources import DEFAULT_PHANTOM_SIZE, dataset_id, open_source


@dataclasses.dataclass
class AugmentOptions:
    """A run. `data`, `size`, `targets`, `per_image`, `seed`, `optimize_seed`, `keep_failed` and the
    checkpoint decide what it makes (a rerun must repeat them to continue it); the rest, where."""

    data: str  # phantom:N[:SEED], a directory with a manifest.jsonl, mimic:ROOT, chexpert:ROOT, iu-xray:IMAGES
    targets: str  # comma-separated requests: "Pneumonia,Fracture,Lung Lesion"
    out: str
    per_image: int = 1  # counterfactuals per (image, target), each with its own seed
    checkpoint: str | None = None  # None: the embedded default
    seed: int = 0
    optimize_seed: bool = True  # the long-tail seed optimisation (Algorithm 2)
    keep_failed: bool = False  # keep results whose verdict failed (marked in the manifest)
    size: int = DEFAULT_PHANTOM_SIZE  # phantom:N images are rendered at this size
    limit: int | None = None  # the first `limit` images of the dataset only
    workers: int = 1  # processes on this machine
    broker: str | None = None  # redis://...: make them on the Celery workers instead
    window: int = 8  # --broker: items in flight at most
    timeout_s: float = 900.0  # --broker: stop when no result arrives for this long
    progress: bool = True


@dataclasses.dataclass
class AugmentSummary:
    planned: int  # items of the run
    already: int  # (image, target) pairs left out: the image already is what the target asks
    resumed: int  # items a previous run had made
    made: int  # items made now
    outcomes: Counter  # over all items: "kept", or why not
    out: str

    def lines(self) -> list[str]:
        kept = self.outcomes.get("kept", 0) + sum(v for k, v in self.outcomes.items() if "(kept, marked)" in k)
        out = [
            f"{self.planned} counterfactuals planned ({self.already} image-target pairs left out: the image "
            f"already has the target), {self.resumed} made before, {self.made} now; {kept} kept in {self.out}"
        ]
        out += [f"  {n:6d}  {what}" for what, n in sorted(self.outcomes.items(), key=lambda kv: -kv[1])]
        return out


def augment(opts: AugmentOptions) -> AugmentSummary:
    from model.modeling import CheckpointError, checkpoint_digest
    from model.pipeline import CounterfactualPipeline, default_checkpoint_dir

    targets = parse_targets(opts.targets)
    if opts.limit is not None and opts.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {opts.limit}")
    if opts.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {opts.workers}")
    sources = open_source(opts.data, opts.size)[: opts.limit]
    items, already = plan(sources, targets, opts.per_image, opts.seed)
    if not items:
        raise ValueError(f"nothing to make: every image of {opts.data} already has what {opts.targets!r} asks")
    pipe = None
    if opts.broker:
        connect(opts.broker).close()  # reachable, before the output directory is touched
        where = Path(opts.checkpoint) if opts.checkpoint else default_checkpoint_dir()
        if not (where / "config.json").is_file():
            raise CheckpointError(f"checkpoint {where} is not a whatif-cxr checkpoint: config.json is missing")
        digest = checkpoint_digest(where)
    else:  # loaded here once even for --workers > 1: a bad checkpoint is reported before any work
        pipe = CounterfactualPipeline.from_pretrained(opts.checkpoint)
        digest = pipe.digest
    settings = {
        **dataclasses.asdict(opts),
        "dataset": dataset_id(opts.data),
        "targets": [t.text for t in targets],
        "checkpoint_digest": digest,
    }
    out = OutputDir(opts.out, settings)
    done = out.open()
    # An item that failed for a reason of the machine's (not its image or target) is made again.
    todo = [item for item in items if item.key not in done or _retry(done[item.key])]
    rows = dict(done)
    tally = Counter(kept=0, dropped=0)
    with tqdm(
        total=len(items), initial=len(items) - len(todo), unit="cf", desc="augment", disable=not opts.progress
    ) as bar:
        if opts.broker:
            outcomes = run_broker(todo, opts.broker, digest, opts.optimize_seed, opts.window, opts.timeout_s)
        else:
            outcomes = run_local(todo, opts.checkpoint, opts.optimize_seed, opts.workers, pipe=pipe)
        for item, (png, fields, error) in zip(todo, outcomes):
            rows[item.key] = row = out.record(item, png, fields, error, digest)
            tally["kept" if row["kept"] else "dropped"] += 1
            bar.set_postfix(tally, refresh=False)
            bar.update(1)
    keys = {item.key for item in items}
    return AugmentSummary(
        planned=len(items),
        already=already,
        resumed=len(items) - len(todo),
        made=len(todo),
        outcomes=Counter(outcome(row) for key, row in rows.items() if key in keys),
        out=opts.out,
    )


def _retry(row: dict) -> bool:
    return bool(row.get("error")) and row["error"].startswith("failed:")
