"""Training stage "editor": the paired editor (`model.editor`) on exact phantom edit pairs.

The generator is frozen. For each pair (`training.datasets.edit_pairs`) the generator does what it
does at inference: the input's z^n is inverted (DDIM) and sampled again conditioned on the
request's canonical text (the checkpoint's sampling settings), and that z^n*, in the input's
identity, is decoded through T (Eq. 3): `raw`. The editor must turn (x, raw, recon, prior, request)
into truth - x: L1 + L2, the pixels the finding changes weighted `FOCUS` times, so that a small
finding is not lost to the background. Trained first on the truth's own z^n instead (noised for
half the pairs), the editor copied whatever the decoding showed and drew nothing right from the
diffusion's samples (docs/experiments.md, 37): it must learn from the samples it will be given.

The generator's part of each pair costs more than the editor's step, so the pairs are made once
(`POOL` of them, deterministic in the master seed) and kept in the run directory
(`state/editor_pairs/`, float16 chunks, no pickle); the steps draw batches from that pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.device import autocast
from model.editor import request_vector

from .datasets.edit_pairs import collate_pairs
from .loop import run_loop, to_device
from .options import Hyper
from .stages import _sync

FOCUS = 10.0


def editor_inputs(pipe, x: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, recon) as the pipeline makes them: the decoding of the generator's own z^n* for each
    request text in x's identity (the checkpoint's sampling: start, steps, guidance), and of x's z.
    `x` on the pipeline's device and in its dtype; so are raw and recon."""
    sampling = pipe.sampling
    with torch.no_grad():
        z = pipe.vae.encode(x).mean
        z_id, z_path = pipe.vae.split(z)
        cond, uncond = pipe.contrastive.text_tokens(texts), pipe.contrastive.text_tokens([""])
        if sampling.start == "inversion":
            z_T = pipe.diffusion.invert(z_path, uncond, sampling.steps)
        else:
            z_T = pipe.tensor(torch.randn(z_path.shape, generator=torch.Generator().manual_seed(len(texts))))
        z_star = pipe.diffusion.sample(z_T, cond, uncond, sampling.steps, sampling.guidance)
        raw = pipe.vae.decode(pipe.transformer(pipe.vae.join(z_id, z_star))).clamp(-1, 1).to(x.dtype)
        recon = pipe.vae.decode(pipe.transformer(z)).clamp(-1, 1).to(x.dtype)
    return raw, recon


POOL = 2400
_CACHED = ("x", "truth", "prior", "mask", "raw", "recon")  # the request vector is rebuilt: it is cheap


def make_pool(pipe, data, folder: Path, chunk: int = 32, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """The first `POOL` pairs with the frozen generator's inputs, cached in `folder` one chunk per
    file, so that an interrupted run goes on where it stopped. The request vectors are not cached:
    they are made again from the pairs, so a change to `request_vector` needs no new pool. The
    generator runs on the pipeline's device in `precision`; the pool is kept on the CPU in float32."""
    n = min(POOL, len(data))
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list] = {k: [] for k in _CACHED}
    for start in tqdm(range(0, n, chunk), desc="editor pairs", unit="chunk"):
        idx = range(start, min(n, start + chunk))
        path = folder / f"pairs-{data.seed}-{data.size}-{start:06d}-{len(idx)}.npz"
        if not path.is_file():
            b = collate_pairs([data[i] for i in idx])
            with autocast(pipe.device, precision):
                raw, recon = editor_inputs(pipe, pipe.tensor(b["x"]), [data.text(i) for i in idx])
            b["raw"], b["recon"] = raw.float().cpu(), recon.float().cpu()
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **{k: b[k].numpy().astype(np.float16) for k in _CACHED})
            tmp.replace(path)
        with np.load(path, allow_pickle=False) as z:
            for k in _CACHED:
                parts[k].append(torch.from_numpy(z[k].astype(np.float32)))
    pool = {k: torch.cat(v) for k, v in parts.items()}
    pool["request"] = torch.stack([request_vector(data.request(i)) for i in range(n)])
    return pool


def editor_stage(pipe, data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    """Train `pipe.editor` on `data` (an `EditPairDataset`) to `steps` steps."""
    pool = make_pool(pipe, data, Path(out) / "state" / "editor_pairs", precision=precision)
    n = len(pool["x"])
    editor = pipe.editor
    editor.train().requires_grad_(True)
    opts = {"editor": torch.optim.AdamW(editor.parameters(), lr=hp.lr * 10)}  # 1e-3 at the default, as the segmenter

    def step(i):
        g = torch.Generator().manual_seed((seed * 1_000_003 + i) % 2**63)
        idx = torch.randint(n, (batch_size,), generator=g)[rank::world]  # each rank its share of one draw
        b = to_device({k: v[idx] for k, v in pool.items()}, pipe.device, pipe.dtype)  # the pool stays on the CPU
        with autocast(pipe.device, precision):
            pred = editor(b["x"], b["raw"], b["recon"], b["prior"], b["request"])
        err = pred.to(pipe.dtype) - (b["truth"] - b["x"])  # the loss in the pipeline's precision
        w = 1.0 + FOCUS * b["mask"]
        loss = (w * (err.abs() + err**2)).mean()
        opts["editor"].zero_grad()
        loss.backward()
        _sync(opts["editor"], world)
        opts["editor"].step()
        inside = float((err.detach().abs() * b["mask"]).sum() / b["mask"].sum().clamp(min=1))
        return {"editor": float(loss.detach()), "mae_in": inside}

    res = run_loop(out, "editor", steps, {"editor": editor}, opts, step, resume, rank=rank)
    editor.eval().requires_grad_(False)
    return res
