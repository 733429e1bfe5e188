"""CounterfactualPipeline: radiograph + target finding(s) -> counterfactual radiograph.

encode (VAE) -> refine the target text -> seed optimisation of the pathology diffusion
(Algorithm 2) -> DDIM sample z^n* -> f = T({z^{1:n-1}, z^n*}) (Eq. 3) -> decode -> quality report.
A checkpoint is one directory: `config.json`, one sub-directory per network, `centroids.safetensors`
(E_CXR reference centroids per label) and `MODEL_CARD.md`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .causal_transformer import CausalTransformer
from .contrastive import ContrastiveModel
from .detail import MAX_DETAIL, restore_detail
from .eval_classifier import EvalClassifier
from .findings_head import FindingsHead
from .identity_encoder import IdentityEncoder
from .labels import CHEXPERT_LABELS, NO_FINDING
from .modeling import SCHEMA_VERSION, CheckpointError, read_config
from .pathology_diffusion import SAMPLING_STARTS, PathologyDiffusion
from .preprocess import ImageInputError, to_model_input
from .presets import Preset, get_preset
from .seed_optimization import SeedOptConfig
from .seed_optimization import keep_optimized, prototype_loss
from .seed_optimization import optimize_seed as run_seed_optimization
from .vae import DisentangledVAE

COMPONENTS = {
    "vae": DisentangledVAE,
    "transformer": CausalTransformer,
    "findings_head": FindingsHead,
    "diffusion": PathologyDiffusion,
    "contrastive": ContrastiveModel,
    "identity_encoder": IdentityEncoder,
    "eval_classifier": EvalClassifier,
}
SYNTHETIC_NOTICE = "SYNTHETIC image made by whatif-cxr; not a patient image; not for clinical use"
Progress = Callable[[str, int, int, float | None], None]


def default_checkpoint_dir() -> Path:
    return Path(__file__).parent / "weights" / "default"


@dataclasses.dataclass
class QualityReport:
    target_probability: dict[str, float]  # evaluation classifier on the counterfactual
    input_probability: dict[str, float]  # ... and on the input, for comparison
    identity_similarity: float  # cosine of E_ID(input) and E_ID(counterfactual)
    ood_score: float  # input reconstruction error in SDs above the training mean (> 3: unlike training data)
    notes: list[str]


def label_indices(labels: Sequence[str]) -> list[int]:
    """Columns of `labels` in the classifiers' outputs (the CheXpert label order)."""
    return [CHEXPERT_LABELS.index(label) for label in labels]


@dataclasses.dataclass
class CounterfactualOutput:
    image: np.ndarray  # float32 (R, R) in [0, 1]
    input_image: np.ndarray  # the preprocessed input, same grid
    difference: np.ndarray  # image - input_image, in [-1, 1]
    condition: str  # the canonical condition text the model was given
    seed: int
    seed_optimized: bool
    lp_history: list[float]
    timings: dict[str, float]  # seconds per stage
    quality: QualityReport
    seed_kept: bool | None = None  # the guard's verdict (SeedOptConfig.guard); None where it did not judge

    def to_uint8(self) -> np.ndarray:
        return np.round(self.image * 255.0).astype(np.uint8)


class CounterfactualPipeline:
    def __init__(self, components: dict[str, torch.nn.Module], centroids: dict[str, torch.Tensor], config: dict):
        missing = sorted(set(COMPONENTS) - set(components))
        if missing:
            raise CheckpointError(f"pipeline needs components {', '.join(missing)}")
        self.vae: DisentangledVAE = components["vae"].eval()
        self.transformer: CausalTransformer = components["transformer"].eval()
        self.findings_head: FindingsHead = components["findings_head"].eval()
        self.diffusion: PathologyDiffusion = components["diffusion"].eval()
        self.contrastive: ContrastiveModel = components["contrastive"].eval()
        self.identity_encoder: IdentityEncoder = components["identity_encoder"].eval()
        self.eval_classifier: EvalClassifier = components["eval_classifier"].eval()
        for m in self.components.values():
            m.requires_grad_(False)
        self.centroids = centroids
        self.config = config
        self.resolution = int(config["preprocessing"]["resolution"])
        self._refiner = None

    @property
    def sampling(self) -> dict:
        """The checkpoint's sampling defaults; checkpoints older than the `start` key start from the
        inversion, and those older than the `detail` key keep the paper's image (no detail restored)."""
        return {"start": "inversion", "detail": 0.0, **self.config["sampling"]}

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in COMPONENTS}

    # --- construction and persistence -----------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str | Preset, seed: int = 0) -> CounterfactualPipeline:
        """An untrained pipeline with the preset's configs (weights from `seed`)."""
        p = get_preset(preset) if isinstance(preset, str) else preset
        torch.manual_seed(seed)
        components = {name: COMPONENTS[name](p.components[name]) for name in COMPONENTS}
        config = {
            "schema_version": SCHEMA_VERSION,
            "kind": "whatif-cxr-pipeline",
            "preset": p.name,
            "labels": list(CHEXPERT_LABELS),
            "preprocessing": {"resolution": p.resolution, "channels": 1, "range": [-1.0, 1.0], "white": "attenuating"},
            "components": {name: name for name in COMPONENTS},
            "text_encoder": {"kind": "project contrastive model, text tower", "tokenizer": "condition-vocabulary"},
            "sampling": dict(p.sampling),
            "seed_optimization": dataclasses.asdict(SeedOptConfig(**p.seed_optimization)),
            "ood": {"recon_mse_mean": 0.0, "recon_mse_std": 1.0},
            "training": {"state": "untrained", "seed": seed},
            "notice": SYNTHETIC_NOTICE,
        }
        return cls(components, {}, config)

    def save_pretrained(self, directory: str | Path, model_card: str | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in self.components.items():
            module.save_pretrained(directory / name)
        tensors = {f"centroid.{k}": v.contiguous() for k, v in self.centroids.items()}
        save_file(tensors or {"empty": torch.zeros(1)}, str(directory / "centroids.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        card = model_card or default_model_card(self.config)
        (directory / "MODEL_CARD.md").write_text(card)

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None) -> CounterfactualPipeline:
        """Load a checkpoint directory; without one, the embedded default model."""
        if directory is None:
            directory = default_checkpoint_dir()
            if not (directory / "config.json").is_file():
                raise CheckpointError(
                    "the embedded default model is not in this installation yet; pass a checkpoint directory "
                    "(`whatif checkpoint init --preset tiny --out DIR` makes an untrained one)"
                )
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint {directory} is not a directory")
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{directory} is not a whatif-cxr checkpoint: config.json is missing")
        config = read_config(cfg_path, "kind", "whatif-cxr-pipeline")
        components = {name: COMPONENTS[name].from_pretrained(directory / sub) for name, sub in config["components"].items()}
        cpath = directory / "centroids.safetensors"
        if not cpath.is_file():
            raise CheckpointError(f"{cpath} is missing")
        centroids = {k.split(".", 1)[1]: v for k, v in load_file(str(cpath)).items() if k.startswith("centroid.")}
        return cls(components, centroids, config)

    # --- the pieces -----------------------------------------------------------------------
    @property
    def refiner(self):
        if self._refiner is None:
            from .refine import Refiner

            self._refiner = Refiner()
        return self._refiner

    def condition_for(self, target) -> tuple[str, list[str]]:
        """(canonical condition text, labels present). `target`: free text or structured findings."""
        from .refine import StructuredFinding, condition_text

        if isinstance(target, str):
            refinement = self.refiner.request(target)
            findings = refinement.findings
        else:
            findings = [f if isinstance(f, StructuredFinding) else StructuredFinding(**{"status": "present", **dict(f)}) for f in target]
        condition = condition_text(findings)
        labels = [f.label for f in findings if f.status == "present" and f.label != NO_FINDING] or [NO_FINDING]
        return condition, labels

    def conditioning(self, condition: str, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's (conditional, unconditional) contexts for a condition text and its labels."""
        vector = torch.zeros(1, len(CHEXPERT_LABELS))
        vector[0, label_indices(labels)] = 1.0
        with torch.no_grad():
            cond = self.diffusion.context(self.contrastive.text_tokens([condition]), vector)
            uncond = self.diffusion.context(self.contrastive.text_tokens([""]))
        return cond, uncond

    def centroid_for(self, labels: Sequence[str], references: Sequence | None, notes: list[str]) -> torch.Tensor:
        """mu_z (Algorithm 2, lines 2-3): from user references, else the checkpoint's per-label centroids."""
        if references:
            refs = torch.cat([to_model_input(r, self.resolution) for r in references])
            with torch.no_grad():
                return self.contrastive.encode_image(refs).mean(0, keepdim=True)
        found = [self.centroids[label] for label in labels if label in self.centroids]
        if not found:
            raise CheckpointError(f"the checkpoint has no reference centroid for {', '.join(labels)}; pass reference images")
        if len(found) < len(labels):
            notes.append("some target labels have no reference centroid; the others were used")
        return torch.stack(found).mean(0, keepdim=True)

    def _render(self, z_id: torch.Tensor, cond, uncond, guidance: float, first_t: int):
        """Seeds (model space) -> images, differentiably, by seed-optimisation method."""

        def render(z: torch.Tensor, method: str, steps: int) -> torch.Tensor:
            if method == "x0":
                e = self.diffusion.eps(z, first_t, cond, uncond, guidance)
                z0 = self.diffusion.from_model_space(self.diffusion.predict_x0(z, first_t, e))
            else:
                z0 = self.diffusion.sample(z, cond, uncond, steps, guidance, grad_steps=1 if method == "shortcut" else steps)
            f = self.transformer(self.vae.join(z_id.expand(z.shape[0], -1, -1, -1), z0))
            return self.vae.decode(f)

        return render

    # --- the call -------------------------------------------------------------------------
    def __call__(
        self,
        image,
        target,
        seed: int = 0,
        optimize_seed: bool = True,
        steps: int | None = None,
        guidance: float | None = None,
        references: Sequence | None = None,
        progress: Progress | None = None,
        seed_opt: SeedOptConfig | None = None,
        start: str | None = None,
        detail: float | None = None,
    ) -> CounterfactualOutput:
        """Make the counterfactual of `image` with `target` (free text or structured findings).

        Args:
            image: 2-D grey array or PIL image (any size from 32 to 8192 pixels a side).
            target: a request ("small left pleural effusion") or a list of findings.
            seed: the initial-noise seed; same seed, same output. With start "inversion" and no seed
                optimisation the output does not depend on it.
            optimize_seed: run the long-tail seed optimisation (Algorithm 2).
            steps, guidance: DDIM steps and classifier-free guidance (checkpoint defaults).
            references: optional reference images of the target (else checkpoint centroids).
            progress: called as progress(stage, step, total, current L_P or None).
            seed_opt: seed-optimisation settings (checkpoint defaults).
            start: where DDIM sampling starts (checkpoint default, else "inversion"):
                "inversion", the DDIM inversion of the input's own z^n, which keeps what z^n holds
                of the patient; "noise", a Gaussian seed from `seed`, as in the paper. With
                several seeds optimised at once, the first is the inversion, the others noise.
            detail: restore the input's fine detail that the autoencoder loses, faded out where the
                counterfactual changes the image by more than about this much on [-1, 1]
                (`model.detail`); 0 gives the paper's decoded image. Checkpoint default.
        """
        steps = int(self.sampling["steps"] if steps is None else steps)
        guidance = float(self.sampling["guidance"] if guidance is None else guidance)
        if not 1 <= steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {steps}")
        if not 0.0 <= guidance <= 30.0:
            raise ValueError(f"guidance must be between 0 and 30, got {guidance}")
        start = str(self.sampling["start"] if start is None else start)
        if start not in SAMPLING_STARTS:
            raise ValueError(f"start must be one of {', '.join(SAMPLING_STARTS)}, got {start!r}")
        detail = float(self.sampling["detail"] if detail is None else detail)
        if not 0.0 <= detail <= MAX_DETAIL:
            raise ValueError(f"detail must be between 0 and {MAX_DETAIL}, got {detail}")
        seed_opt = seed_opt or SeedOptConfig(**self.config["seed_optimization"])
        notes: list[str] = []
        timings: dict[str, float] = {}
        report = progress or (lambda *a: None)

        t = time.perf_counter()
        x = to_model_input(image, self.resolution, notes)
        if not torch.isfinite(x).all():
            raise ImageInputError("image contains NaN or infinite values")
        condition, labels = self.condition_for(target)
        with torch.no_grad():
            dist = self.vae.encode(x)
            z_id, z_path_input = self.vae.split(dist.mean)
            recon = self.vae.decode(self.transformer(dist.mean))
            cond, uncond = self.conditioning(condition, labels)
        timings["encode"] = time.perf_counter() - t
        report("encode", 1, 1, None)

        g = torch.Generator().manual_seed(int(seed))
        latent = self.diffusion.config.latent_size
        z_T = torch.randn((seed_opt.batch_seeds if optimize_seed else 1, 1, latent, latent), generator=g)
        if start == "inversion":
            t = time.perf_counter()
            with torch.no_grad():
                z_T[0] = self.diffusion.invert(z_path_input, uncond, steps)[0]
            timings["inversion"] = time.perf_counter() - t
            report("inversion", 1, 1, None)
        history: list[float] = []
        z_start = z_T[:1].clone()  # the seed a request without seed optimisation samples from
        if optimize_seed:
            t = time.perf_counter()
            centroid = self.centroid_for(labels, references, notes)
            render = self._render(z_id, cond, uncond, guidance, self.diffusion.timesteps(steps)[0])
            with torch.enable_grad():  # Algorithm 2 needs gradients also when the caller is in no_grad
                res = run_seed_optimization(
                    z_T, render, centroid, self.contrastive.encode_image, seed_opt,
                    callback=lambda i, n, lp: report("seed_optimization", i, n, lp),
                    classify=lambda images: self.target_loss(images, labels),
                )
            z_T, history = res.seed, res.history
            timings["seed_optimization"] = time.perf_counter() - t  # its iterations: len(history) - 1

        guarded = optimize_seed and seed_opt.guard and not torch.equal(z_T, z_start)
        keep: bool | None = None
        t = time.perf_counter()
        with torch.no_grad():
            seeds = torch.cat([z_T, z_start]) if guarded else z_T
            z_path = self.diffusion.sample(seeds, cond, uncond, steps, guidance, callback=lambda i, n: report("sampling", i, n, None))
        timings["sampling"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            x_cf = self.compose(z_id, z_path, x, recon, detail)
        timings["decode"] = time.perf_counter() - t
        report("decode", 1, 1, None)
        if guarded:
            # SeedOptConfig.guard (not in the paper): judge the optimised sample (first) against the
            # starting seed's (second) and keep the starting one where the optimisation did not help.
            with torch.no_grad():
                if seed_opt.guard_by == "head":
                    optimized, initial = (float(v) for v in self.target_score(z_path, labels))
                    why = f"the findings head scored the target {optimized:.2f} on the optimised seed against {initial:.2f} on the starting seed"
                else:  # "lp": Eq. 18 on the images returned, higher score = lower L_P
                    lp = prototype_loss(self.contrastive.encode_image(x_cf), centroid)
                    optimized, initial = -float(lp[0]), -float(lp[1])
                    why = f"L_P of the final image was {-optimized:.3f} on the optimised seed against {-initial:.3f} on the starting seed"
            keep = keep_optimized(optimized, initial)
            if not keep:
                notes.append(f"seed optimisation undone: {why}")
            x_cf = x_cf[0:1] if keep else x_cf[1:2]

        t = time.perf_counter()
        quality = self._quality(x, x_cf, recon, labels, notes)
        timings["quality"] = time.perf_counter() - t
        img = ((x_cf[0, 0].clamp(-1, 1) + 1) / 2).numpy()
        inp = ((x[0, 0] + 1) / 2).numpy()
        return CounterfactualOutput(img, inp, img - inp, condition, int(seed), optimize_seed, history, timings, quality, keep)

    def compose(self, z_id: torch.Tensor, z_path: torch.Tensor, x: torch.Tensor, recon: torch.Tensor, detail: float) -> torch.Tensor:
        """The images of pathology channels `z_path` (B, 1, h, w) in the input's identity `z_id`:
        f = T({z^{1:n-1}, z^n}) (Eq. 3), decoded, with the input `x`'s fine detail restored
        (`model.detail`; `recon` is x's reconstruction). (B, 1, R, R) on [-1, 1]."""
        x_cf = self.vae.decode(self.transformer(self.vae.join(z_id.expand(len(z_path), -1, -1, -1), z_path))).clamp(-1, 1)
        return restore_detail(x_cf, x, recon, detail)

    def target_score(self, z_path: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """The findings head's mean probability of `labels` on each z^n of the batch, (B,)."""
        return torch.sigmoid(self.findings_head(z_path))[:, label_indices(labels)].mean(dim=1)

    def target_loss(self, images: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """SeedOptConfig.cls_weight's term: the findings head's binary cross-entropy for `labels`
        present, on each image re-encoded to z^n, (B,); differentiable in the images."""
        logits = self.findings_head(self.vae.split(self.vae.encode(images).mean)[1])[:, label_indices(labels)]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none").mean(dim=1)

    def _quality(self, x, x_cf, recon, labels, notes) -> QualityReport:
        with torch.no_grad():
            p_cf = torch.sigmoid(self.eval_classifier(x_cf))[0]
            p_in = torch.sigmoid(self.eval_classifier(x))[0]
            sim = float((self.identity_encoder(x) * self.identity_encoder(x_cf)).sum())
            mse = float(((recon - x) ** 2).mean())
        ood = self.config["ood"]
        idx = label_indices(labels)
        return QualityReport(
            target_probability={CHEXPERT_LABELS[i]: float(p_cf[i]) for i in idx},
            input_probability={CHEXPERT_LABELS[i]: float(p_in[i]) for i in idx},
            identity_similarity=sim,
            ood_score=(mse - ood["recon_mse_mean"]) / max(ood["recon_mse_std"], 1e-8),
            notes=notes,
        )


def default_model_card(config: dict) -> str:
    state = config.get("training", {}).get("state", "unknown")
    return f"""# whatif-cxr checkpoint ({config.get('preset')})

State: {state}. Preset `{config.get('preset')}`, {config['preprocessing']['resolution']}x{config['preprocessing']['resolution']} grey radiographs.

Intended use: demonstration and testing of the whatif-cxr software. Every image it makes is
synthetic. **Not for clinical use.** An untrained checkpoint produces noise-like images; it exists
so that the pipeline, the service and their tests run without a trained model.
"""
