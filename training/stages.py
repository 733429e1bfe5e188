"""The training stages of whatif-cxr (paper Algorithm 1, with stage 0 for the encoders it assumes).

stage0: the image-report contrastive model (E_CXR and the text encoder), the identity encoder
        E_ID (same identity, other findings: positives) and the evaluation classifier, the last
        on data no other stage sees (master seed + 7919).
stage1: VAE + T + findings head (Algorithm 1, lines 1-23). L_recon (Eq. 4: MSE + lambda (1 - SSIM)),
        alpha KL, beta per-label BCE (Eq. 6 read as multi-label), and every 5th step the
        pathology swap with gamma L_ID + delta L_PC as docs/design.md reads Eq. 8: identity kept from A,
        pathology taken from B, both decoded through T. On phantom data, `Hyper.paired_weight` > 0 adds a
        term the paper cannot have: half of each batch is replaced by the true counterfactuals of
        the other half (same identity, class-balanced findings) and D(T({z_A^{1:n-1}, z_P^n})) must
        reproduce x_P pixel for pixel (and the symmetric swap), Eq. 4's loss on the swap itself,
        with the pixels where the pair differs (its findings) weighted `Hyper.paired_focus` times.
stage2: the pathology diffusion on z^n (lines 24-36) conditioned on the refined report text, with
        caption dropout so that classifier-free guidance has an unconditional model.
classifier: the evaluation classifier again, on class-balanced phantoms (so that it measures
        the tail findings as well as the head ones), with acquisition augmentation (blur, noise,
        exposure: `training.augment`) so that it scores findings rather than the render's texture.
segmenter: the anatomy segmenter alone (not in the paper; the product's edit regions read it), on
        the run's phantom cases against the renderer's exact masks, with the acquisition augmentation,
        positioning (rotation, zoom, shift, the masks moved with the image) and exposure gain.
editor: the paired editor alone (not in the paper; `training.editor_stage`), on exact phantom pairs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from model.device import autocast
from model.vae import ssim

from .augment import AcquisitionAugment, PositioningAugment
from .loop import TrainingError, batches, run_loop, to_device
from .options import Hyper


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A generator seeded by (master seed, rank, step): a resumed run draws at step i what an
    unbroken run would have, whatever sittings it was split into. A CPU generator on every device:
    the draws are made on the CPU and moved, so a seed draws the same on a GPU."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63)


def _sync(optimizer: torch.optim.Optimizer, world: int) -> None:
    """Data parallel under torchrun: average gradients over ranks before the step (what DDP does)."""
    if world > 1:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world


def stage0(pipe, data, eval_data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    parts = {"contrastive": pipe.contrastive, "identity": pipe.identity_encoder, "classifier": pipe.eval_classifier}
    if getattr(pipe.identity_encoder, "pretrained", False):  # a pretrained E_ID (VGG-16) stays frozen
        hp = dataclasses.replace(hp, freeze=tuple({*hp.freeze, "identity"}))
    # Frozen parts are left out of the saved and restored state too: a resume must not put back
    # stage 0's old copy over weights another stage has trained since.
    train_parts = {k: m for k, m in parts.items() if k not in hp.freeze}
    if not train_parts:
        raise TrainingError(
            "stage0 has nothing to train: the identity encoder is pretrained and the other two are frozen"
        )
    for name, m in parts.items():
        if name in train_parts:
            m.train().requires_grad_(True)
        else:
            m.eval().requires_grad_(False)
    if "text" in hp.freeze:
        for p in pipe.contrastive.text_parameters():
            p.requires_grad_(False)
    if "image" in hp.freeze:
        pipe.contrastive.clip.visual.eval()
        for p in pipe.contrastive.image_parameters():
            p.requires_grad_(False)
    # One tower alone has an optimiser of its own name: a sitting that trained both towers saved
    # Adam moments for more parameters, and `load_state` starts a fresh optimiser for a name the
    # saved state lacks (and likewise when both towers train again after it).
    alone = {"text": "contrastive_image", "image": "contrastive_text"}  # frozen tower -> the one that trains
    opt_name = {"contrastive": alone[t] for t in alone if t in hp.freeze}
    opts = {
        opt_name.get(name, name): torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=hp.lr * 3)
        for name, m in train_parts.items()
    }
    clip, ident, clf = parts["contrastive"], parts["identity"], parts["classifier"]
    it = batches(data, batch_size, seed, rank, world, pipe.device, pipe.dtype)
    it_eval = batches(eval_data, batch_size, seed + 1, rank, world, pipe.device, pipe.dtype)
    zero = torch.zeros((), device=pipe.device, dtype=pipe.dtype)  # the loss of a part that is frozen

    has_views = hasattr(data, "other_view") and "identity" in train_parts

    def step(i):
        b = next(it)
        be = next(it_eval) if "classifier" in train_parts else None
        with autocast(pipe.device, precision):
            loss_c = clip.contrastive_loss(b["image"], b["text"]) if "contrastive" in train_parts else zero
            if has_views:
                # E_ID: the same identity with other findings is the positive, the rest of the batch
                # the negatives (InfoNCE, temperature 0.1).
                others = torch.stack([data.other_view(j) for j in b["index"]])
                e1, e2 = ident(b["image"]), ident(to_device(others, pipe.device, pipe.dtype))
                loss_i = F.cross_entropy(e1 @ e2.t() / 0.1, torch.arange(len(others), device=pipe.device))
            else:
                loss_i = zero
            loss_k = F.binary_cross_entropy_with_logits(clf(be["image"]), be["labels"]) if be is not None else zero
        for opt in opts.values():
            opt.zero_grad()
        (loss_c + loss_i + loss_k).backward()
        for opt in opts.values():
            _sync(opt, world)
            opt.step()
        losses = {"contrastive": loss_c, "identity": loss_i, "classifier": loss_k}
        return {k: float(v.detach()) for k, v in losses.items() if k in train_parts}

    res = run_loop(out, "stage0", steps, train_parts, opts, step, resume, rank=rank)
    for m in parts.values():
        m.eval().requires_grad_(False)
    return res


def classifier_stage(pipe, data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    """The evaluation classifier alone, on class-balanced phantoms (`BalancedPhantomDataset`).

    It measures the counterfactuals (Table 2) and nothing trains on its output, so it can be
    trained after the generative stages, on data none of them sees.
    """
    clf = pipe.eval_classifier
    clf.train().requires_grad_(True)
    opts = {"classifier": torch.optim.AdamW(clf.parameters(), lr=hp.lr * 3)}
    it = batches(data, batch_size, seed, rank, world, pipe.device, pipe.dtype)
    augment = AcquisitionAugment(p=hp.acquisition_augment)

    def step(i):
        b = next(it)
        # Step i draws the same blur, noise and exposure however the run was split into sittings.
        x = augment(b["image"], _step_generator(seed, rank, i))
        with autocast(pipe.device, precision):
            loss = F.binary_cross_entropy_with_logits(clf(x), b["labels"])
        opts["classifier"].zero_grad()
        loss.backward()
        _sync(opts["classifier"], world)
        opts["classifier"].step()
        return {"classifier": float(loss.detach())}

    res = run_loop(out, "classifier", steps, {"classifier": clf}, opts, step, resume, rank=rank)
    clf.eval().requires_grad_(False)
    return res


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the soft Dice of sigmoid(logits) and `target` (B, C, H, W), per image and channel, averaged.

    BCE alone weighs every pixel alike, and the heart is a tenth of the lungs' area; Dice weighs
    each structure as a whole. `eps` keeps an empty target (a mask moved out of view) finite."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    return 1 - ((2 * inter + eps) / (p.sum((2, 3)) + target.sum((2, 3)) + eps)).mean()


def segmenter_stage(pipe, data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    """The anatomy segmenter alone, on phantoms with their exact masks (`AnatomyDataset`).

    Nothing else reads it in training, and it reads nothing another stage trains, so it can be
    trained at any point, and added to a finished checkpoint. Loss: per-pixel BCE + soft Dice.
    """
    seg = pipe.segmenter
    seg.train().requires_grad_(True)
    # 10x the base rate: Adam at 1e-3, the usual rate for a small U-Net from scratch.
    opts = {"segmenter": torch.optim.AdamW(seg.parameters(), lr=hp.lr * 10)}
    it = batches(data, batch_size, seed, rank, world, pipe.device, pipe.dtype)
    acquisition = AcquisitionAugment(p=hp.acquisition_augment)
    positioning = PositioningAugment(p=hp.acquisition_augment)

    def step(i):
        b = next(it)
        # Step i draws the same motion, exposure, blur and noise however the run was split into sittings.
        g = _step_generator(seed, rank, i)
        x, target = positioning(b["image"], b["anatomy"], g)
        x = acquisition(x, g)
        with autocast(pipe.device, precision):
            logits = seg(x)
            bce = F.binary_cross_entropy_with_logits(logits, target)
            dice = soft_dice_loss(logits.to(target.dtype), target)  # Dice's sums in the data's precision, not bf16
        opts["segmenter"].zero_grad()
        (bce + dice).backward()
        _sync(opts["segmenter"], world)
        opts["segmenter"].step()
        return {"bce": float(bce.detach()), "dice_loss": float(dice.detach())}

    res = run_loop(out, "segmenter", steps, {"segmenter": seg}, opts, step, resume, rank=rank)
    seg.eval().requires_grad_(False)
    return res


def _mse(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return F.mse_loss(a, b) if w is None else (w * (a - b) ** 2).mean()


def stage1(pipe, data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    vae, T, head = pipe.vae, pipe.transformer, pipe.findings_head
    e_cxr, e_id = pipe.contrastive, pipe.identity_encoder  # frozen, from stage 0
    for m in (vae, T, head):
        m.train().requires_grad_(True)
    params = [*vae.parameters(), *T.parameters(), *head.parameters()]
    opts = {"stage1": torch.optim.AdamW(params, lr=hp.lr)}
    it = batches(data, batch_size, seed, rank, world, pipe.device, pipe.dtype)
    g = torch.Generator().manual_seed(seed)  # on the CPU: the latent's noise is drawn there and moved

    paired = hp.paired_weight > 0  # train() has checked that the data has counterfactual views

    def step(i):
        b = next(it)
        x, y = b["image"], b["labels"]
        w = None
        if paired:
            # First half: the batch's cases; second half: their true counterfactuals.
            h = len(x) // 2
            views = to_device(data.counterfactual_batch(b["index"][:h]), pipe.device, pipe.dtype)
            x = torch.cat([x[:h], views["image"]])
            y = torch.cat([y[:h], views["labels"]])
            # The pair is identical outside its findings (same identity, positioning and noise), so
            # |x_A - x_P| marks the findings of either; 0.02 is 2.5 grey levels of 255.
            differ = ((x[:h] - x[h:]).abs() > 0.02).to(x.dtype)
            w = 1 + hp.paired_focus * torch.cat([differ, differ])
        with autocast(pipe.device, precision):
            dist = vae.encode(x)
            z = dist.sample(g)
            # The losses in the data's precision (fp32), not bf16: SSIM's variances are differences of squares.
            x_hat = vae.decode(T(z)).to(x.dtype)
            l_rec = _mse(x_hat, x, w) + hp.lam * (1 - ssim(x_hat, x))  # Eq. 4 (weighted only with `paired`)
            # KL per latent element (mean): with the sum, alpha = 0.1 would swamp a per-pixel MSE.
            l_kl = dist.kl() / z[0].numel()
            l_cls = F.binary_cross_entropy_with_logits(head(vae.split(z)[1]), y)  # Eq. 6, multi-label
            loss = l_rec + hp.kl_weight * l_kl + hp.beta * l_cls
            out_m = {"recon": float(l_rec.detach()), "kl": float(l_kl.detach()), "cls": float(l_cls.detach())}
            if paired:
                # Identity of one view, pathology of the other: the result is known, the other view.
                z_id, z_n = vae.split(z)
                swap = torch.cat([torch.arange(h, 2 * h), torch.arange(h)]).to(pipe.device)
                x_sw = vae.decode(T(vae.join(z_id, z_n[swap]))).to(x.dtype)
                l_pair = _mse(x_sw, x[swap], w) + hp.lam * (1 - ssim(x_sw, x[swap]))  # w is symmetric in the pair
                loss = loss + hp.paired_weight * l_pair
                out_m["paired"] = float(l_pair.detach())
            if (i + 1) % hp.swap_every == 0:
                # Algorithm 1 lines 7-13 as docs/design.md reads them: x'_A = D(T({z_A^{1:n-1}, z_B^n})).
                z_b = z.roll(1, dims=0)
                x_b = x.roll(1, dims=0)
                x_ab = vae.decode(T(vae.join(vae.split(z)[0], vae.split(z_b)[1]))).to(x.dtype)
                l_id = ((e_id(x) - e_id(x_ab)) ** 2).sum(-1).mean()  # identity kept from A
                l_pc = ((e_cxr.encode_image(x_b) - e_cxr.encode_image(x_ab)) ** 2).sum(-1).mean()  # pathology from B
                loss = loss + hp.gamma * l_id + hp.delta * l_pc
                out_m.update({"id": float(l_id.detach()), "pc": float(l_pc.detach())})
        opts["stage1"].zero_grad()
        loss.backward()
        _sync(opts["stage1"], world)
        opts["stage1"].step()
        out_m["total"] = float(loss.detach())
        return out_m

    res = run_loop(out, "stage1", steps, {"vae": vae, "transformer": T, "head": head}, opts, step, resume, rank=rank)
    for m in (vae, T, head):
        m.eval().requires_grad_(False)
    return res


def latent_statistics(pipe, data, n: int = 256) -> tuple[float, float]:
    """Mean and 1/std of z^n over `n` training images: the diffusion's latent standardisation."""
    zs = []
    with torch.no_grad():
        for i in range(min(n, len(data))):
            zs.append(pipe.vae.split(pipe.vae.encode(pipe.tensor(data[i]["image"][None])).mean)[1])
    z = torch.cat(zs)
    return float(z.mean()), float(1.0 / z.std().clamp_min(1e-6))


def stage2(pipe, data, out, steps, batch_size, hp: Hyper, resume, seed, rank=0, world=1, precision="fp32"):
    diff = pipe.diffusion
    if not (resume and (out / "state" / "stage2" / "state.json").is_file()):
        shift, scale = latent_statistics(pipe, data)
        diff.config.latent_shift, diff.config.latent_scale = shift, scale
    diff.train().requires_grad_(True)
    opts = {"stage2": torch.optim.AdamW(diff.parameters(), lr=hp.lr * 3)}
    it = batches(data, batch_size, seed, rank, world, pipe.device, pipe.dtype)
    g = torch.Generator().manual_seed(seed)  # on the CPU: the noise and the steps are drawn there and moved

    def step(i):
        b = next(it)
        # Caption dropout: an empty text trains the unconditional model used for guidance.
        drop = torch.rand(len(b["text"]), generator=g) < hp.caption_dropout
        texts = ["" if d else t for d, t in zip(drop.tolist(), b["text"])]
        with autocast(pipe.device, precision):
            with torch.no_grad():  # the VAE and the text tower stay as stages 1 and 0 left them
                # z^n in the pipeline's precision: the noising below must not round it to bf16.
                z_path = pipe.vae.split(pipe.vae.encode(b["image"]).mean)[1].to(pipe.dtype)
                cond = pipe.contrastive.text_tokens(texts)  # c_t of Eq. 16: the report's per-token features
            loss = diff.training_loss(z_path, cond, g)  # L_G, Eq. 16
        opts["stage2"].zero_grad()
        loss.backward()
        _sync(opts["stage2"], world)
        opts["stage2"].step()
        return {"diffusion": float(loss.detach())}

    res = run_loop(out, "stage2", steps, {"diffusion": diff}, opts, step, resume, rank=rank)
    diff.eval().requires_grad_(False)
    return res
