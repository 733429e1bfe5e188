"""CounterfactualPipeline: radiograph + target finding(s) -> counterfactual radiograph.

`__call__` runs twelve public steps, each callable alone for diagnostics: 1. `check_inputs`,
2. `encode` (z = E_VAE(x), Algorithm 2 line 4), 3. `condition` (the refined target -> c_t),
4. `locate` (the input's lungs and heart, from the segmenter), 5. `starting_seed` (z_T^n, line 1,
or the DDIM inversion of the input's z^n), 6. `optimize_seed` (Algorithm 2, lines 2-13), 7. `sample`
(DDIM -> z^n*), 8. `compose` (f = T({z^{1:n-1}, z^n*}), Eq. 3, decoded), 9. `guard` (the findings
head's verdict on the optimised seed), 10. `edit_region` (the request's anatomy on this input, where
the model changed it: `model.regions`), 11. `judge` (the verdict: `model.verdict`), 12. `quality`;
the chosen candidate's change is then carried onto the input's own pixels (`model.composite`).
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

from . import regions
from .causal_transformer import CausalTransformer
from .composite import cap_size, composite, native_to_grid
from .contrastive import ContrastiveModel
from .detail import restore_detail
from .editor import PairedEditor, request_vector
from .eval_classifier import EvalClassifier
from .findings_head import FindingsHead
from .identity_encoder import IdentityEncoder
from .labels import CHEXPERT_LABELS, NO_FINDING, SUPPORT_DEVICES
from .modeling import SCHEMA_VERSION, CheckpointError, checkpoint_digest, read_config
from .notice import SYNTHETIC_NOTICE
from .pathology_diffusion import PathologyDiffusion
from .preprocess import ImageInputError, to_model_input, to_unit_grey
from .presets import Preset, get_preset
from .sampling import SamplingConfig
from .seed_optimization import SeedOptConfig, SeedOptResult, keep_optimized, optimize_seeds
from .seed_optimization import optimize_seed as run_seed_optimization
from .segmenter import AnatomySegmenter
from .vae import DisentangledVAE
from .verdict import Verdict, VerdictConfig, judge

COMPONENTS = {
    "vae": DisentangledVAE,
    "transformer": CausalTransformer,
    "findings_head": FindingsHead,
    "diffusion": PathologyDiffusion,
    "contrastive": ContrastiveModel,
    "identity_encoder": IdentityEncoder,
    "eval_classifier": EvalClassifier,
    "segmenter": AnatomySegmenter,
    "editor": PairedEditor,
}
MAX_CANDIDATES = 8
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
    """A counterfactual at the input's own size, the edit region it was confined to and its verdict.

    Outside `region`, `image` equals `input_image` value for value: the patient's pixels are kept.
    """

    image: np.ndarray  # float32 (H, W) in [0, 1]: the result, at the input's size
    input_image: np.ndarray  # float32 (H, W) in [0, 1]: the input as read (`to_unit_grey`)
    difference: np.ndarray  # image - input_image, in [-1, 1]
    region: np.ndarray  # bool (H, W): the edit region; nothing outside it changed
    region_source: str  # "automatic" (the request's anatomy on this input) or "user"
    model_image: np.ndarray  # float32 (R, R): the generator's own output on the model grid, before the region
    model_input: np.ndarray  # float32 (R, R): the input on the model grid
    condition: str  # the canonical condition text the model was given
    seed: int
    seed_optimized: bool
    lp_history: list[float]
    timings: dict[str, float]  # seconds per stage
    quality: QualityReport
    verdict: Verdict
    candidates: list[dict]  # every candidate's seed and verdict; `chosen` is the one returned
    chosen: int = 0
    seed_kept: bool | None = None  # the guard's verdict (SeedOptConfig.guard); None where it did not judge

    def to_uint8(self) -> np.ndarray:
        return np.round(self.image * 255.0).astype(np.uint8)

    def to_uint16(self) -> np.ndarray:
        return np.round(self.image * 65535.0).astype(np.uint16)

    def region_uint8(self) -> np.ndarray:
        return self.region.astype(np.uint8) * 255


@dataclasses.dataclass
class EncodedImage:
    """Step 2's output: the input on the model's grid and its latent."""

    x: torch.Tensor  # (1, 1, R, R) on [-1, 1], the preprocessed input
    z_id: torch.Tensor  # (1, n-1, h, w), identity channels z^{1:n-1} (the encoder's mean)
    z_path: torch.Tensor  # (1, 1, h, w), the input's pathology channel z^n
    recon: torch.Tensor  # (1, 1, R, R), D_VAE(T(z)): the input's reconstruction


@dataclasses.dataclass
class Conditioning:
    """Step 3's output: what the denoiser is conditioned on."""

    text: str  # the canonical condition text
    labels: list[str]  # the target labels present (["No Finding"] for a normal target)
    findings: list  # the structured findings (`model.refine.StructuredFinding`): added, removed, where
    cond: torch.Tensor  # (1, L, D) the conditional context c_t
    uncond: torch.Tensor  # (1, L, D) the unconditional context of classifier-free guidance


@dataclasses.dataclass
class GuardVerdict:
    """Step 8's output: the findings head's mean probability of the target labels on z^n sampled
    from the optimised seed and from the starting seed, and whether the optimised one stays."""

    keep: bool
    optimized_score: float
    initial_score: float

    @property
    def note(self) -> str:
        return (
            f"seed optimisation undone: the findings head scored the target {self.optimized_score:.2f} "
            f"on the optimised seed against {self.initial_score:.2f} on the starting seed"
        )


@dataclasses.dataclass
class Request:
    """One request of `CounterfactualPipeline.batch`: `__call__`'s per-request arguments."""

    image: object  # 2-D grey array or PIL image
    target: object  # free text or structured findings
    seed: int = 0
    optimize_seed: bool = True
    references: Sequence | None = None
    region: object = None
    candidates: int = 1
    progress: Progress | None = None


@dataclasses.dataclass
class _Prepared:
    """A request in flight through `CounterfactualPipeline.batch`: what each step made of it."""

    request: Request
    report: Callable
    candidates: int
    notes: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    grey: np.ndarray | None = None
    conditioning: Conditioning | None = None
    user: np.ndarray | None = None
    encoded: EncodedImage | None = None
    anatomy: regions.Anatomy | None = None
    centroid: torch.Tensor | None = None
    history: list[float] = dataclasses.field(default_factory=list)
    guarded: bool = False
    z_path: torch.Tensor | None = None


def _seed_opt_callback(report: Callable) -> Callable[[int, int, float], None]:
    return lambda i, n, lp: report("seed_optimization", i, n, lp)


class CounterfactualPipeline:
    """Radiograph + target finding(s) -> counterfactual radiograph (`__call__`).

    Args:
        components: the seven networks by name (`COMPONENTS`): the VAE (E_VAE, D_VAE), the causal
            transformer T, the findings head on z^n, the pathology diffusion M, the contrastive
            model (E_CXR and the text encoder), the identity encoder E_ID and the evaluation
            classifier. They are put in eval mode and frozen.
        centroids: E_CXR reference centroids mu_z per label (Eq. 17), for Algorithm 2 without
            user references.
        config: the checkpoint's `config.json`: preprocessing (the resolution), `sampling`
            (`SamplingConfig` fields, all of them), `seed_optimization` (`SeedOptConfig` fields,
            all of them), `ood` (the training reconstruction error's mean and SD), provenance.
    """

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
        self.segmenter: AnatomySegmenter = components["segmenter"].eval()
        self.editor: PairedEditor = components["editor"].eval()
        for m in self.components.values():
            m.requires_grad_(False)
        self.centroids = centroids
        self.config = config
        self.resolution = int(config["preprocessing"]["resolution"])
        # a bad sampling or seed_optimization section is an error at load, not at the first call
        self._settings(SamplingConfig, "sampling")
        self._settings(SeedOptConfig, "seed_optimization")
        self._settings(VerdictConfig, "verdict")
        self._refiner = None
        # `model.modeling.checkpoint_digest` of the directory it was loaded from (None: built in memory)
        self.digest: str | None = None

    def _settings(self, cls, key: str):
        try:
            return cls.from_dict(self.config[key], complete=True)
        except KeyError:
            raise CheckpointError(
                f"the pipeline config has no {key!r} section; re-save the checkpoint or retrain"
            ) from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the pipeline config's {key}: {exc}") from None

    @property
    def sampling(self) -> SamplingConfig:
        """The checkpoint's sampling settings (`config["sampling"]`), which a call may override."""
        return self._settings(SamplingConfig, "sampling")

    @property
    def seed_optimization(self) -> SeedOptConfig:
        """The checkpoint's seed-optimisation settings (`config["seed_optimization"]`)."""
        return self._settings(SeedOptConfig, "seed_optimization")

    @property
    def verdict_config(self) -> VerdictConfig:
        """The verdict's thresholds (`config["verdict"]`)."""
        return self._settings(VerdictConfig, "verdict")

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in COMPONENTS}

    # --- device and precision ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the networks are; every tensor the pipeline makes is made there."""
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' floating-point type; every tensor the pipeline makes has it."""
        return next(self.vae.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CounterfactualPipeline:
        """Move every network and the reference centroids to `device` and/or `dtype` (None keeps
        it), as diffusers' `DiffusionPipeline.to`; returns the pipeline. Mixed precision is not a
        dtype: the weights stay fp32 and the caller runs the call under `model.device.autocast`."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        for module in self.components.values():
            module.to(device=device, dtype=dtype)
        self.centroids = {k: v.to(device=device, dtype=dtype) for k, v in self.centroids.items()}
        return self

    def tensor(self, value) -> torch.Tensor:
        """`value` (an array, a tensor made on the CPU) on the pipeline's device, in its dtype."""
        return torch.as_tensor(value).to(device=self.device, dtype=self.dtype)

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
            "sampling": p.sampling.to_dict(),
            "seed_optimization": p.seed_optimization.to_dict(),
            "verdict": VerdictConfig().to_dict(),
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
        tensors = {f"centroid.{k}": v.detach().contiguous().cpu() for k, v in self.centroids.items()}
        save_file(tensors or {"empty": torch.zeros(1)}, str(directory / "centroids.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        card = model_card or default_model_card(self.config)
        (directory / "MODEL_CARD.md").write_text(card)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path | None = None, device: str | torch.device | None = None
    ) -> CounterfactualPipeline:
        """Load a checkpoint directory (without one, the embedded default model) onto `device`
        (None: the CPU). The weights are read onto the CPU and moved once."""
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
        components = {
            name: COMPONENTS[name].from_pretrained(directory / sub) for name, sub in config["components"].items()
        }
        cpath = directory / "centroids.safetensors"
        if not cpath.is_file():
            raise CheckpointError(f"{cpath} is missing")
        centroids = {k.split(".", 1)[1]: v for k, v in load_file(str(cpath)).items() if k.startswith("centroid.")}
        pipe = cls(components, centroids, config)
        pipe.digest = checkpoint_digest(directory)
        return pipe if device is None else pipe.to(device=device)

    # --- the pieces -----------------------------------------------------------------------
    @property
    def refiner(self):
        if self._refiner is None:
            from .refine import Refiner

            self._refiner = Refiner()
        return self._refiner

    def condition_for(self, target) -> tuple[str, list[str], list]:
        """(canonical condition text, labels present, the structured findings). `target`: free text
        or structured findings."""
        from .refine import StructuredFinding, condition_text

        if isinstance(target, str):
            refinement = self.refiner.request(target)
            findings = refinement.findings
        else:
            findings = [
                f if isinstance(f, StructuredFinding) else StructuredFinding(**{"status": "present", **dict(f)})
                for f in target
            ]
        condition = condition_text(findings)
        labels = [f.label for f in findings if f.status == "present" and f.label != NO_FINDING] or [NO_FINDING]
        return condition, labels, list(findings)

    def conditioning(self, condition: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's (conditional, unconditional) contexts for a condition text: c_t of Eq. 16,
        and the empty text's for classifier-free guidance."""
        with torch.no_grad():
            cond = self.contrastive.text_tokens([condition])  # the report's per-token features
            uncond = self.contrastive.text_tokens([""])
        return cond, uncond

    def centroid_for(self, labels: Sequence[str], references: Sequence | None, notes: list[str]) -> torch.Tensor:
        """mu_z (Algorithm 2, lines 2-3): from user references, else the checkpoint's per-label centroids."""
        if references:
            refs = self.tensor(torch.cat([to_model_input(r, self.resolution) for r in references]))
            with torch.no_grad():
                return self.contrastive.encode_image(refs).mean(0, keepdim=True)
        found = [self.centroids[label] for label in labels if label in self.centroids]
        if not found:
            raise CheckpointError(
                f"the checkpoint has no reference centroid for {', '.join(labels)}; pass reference images"
            )
        if len(found) < len(labels):
            notes.append("some target labels have no reference centroid; the others were used")
        return torch.stack(found).mean(0, keepdim=True)

    def renderer(self, z_id: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance: float, first_t: int):
        """`render(z, method, steps, rows=None)`: seeds (model space) -> images in identity `z_id`,
        differentiably, by seed-optimisation method (Algorithm 2, lines 6-9; `SeedOptConfig.method`).
        `first_t` is the first DDIM timestep, where the "x0" method predicts. `z_id` and `cond` have
        one row, or one per seed of a batch (`batch`), of which `rows` picks those of `z`."""

        def render(z: torch.Tensor, method: str, steps: int, rows: torch.Tensor | None = None) -> torch.Tensor:
            zi, c = (z_id, cond) if rows is None or len(z_id) == 1 else (z_id[rows], cond[rows])
            if method == "x0":
                e = self.diffusion.eps(z, first_t, c, uncond, guidance)
                z0 = self.diffusion.from_model_space(self.diffusion.predict_x0(z, first_t, e))
            else:
                z0 = self.diffusion.sample(
                    z, c, uncond, steps, guidance, grad_steps=1 if method == "shortcut" else steps
                )
            f = self.transformer(self.vae.join(zi.expand(z.shape[0], -1, -1, -1), z0))
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
        region=None,
        candidates: int = 1,
    ) -> CounterfactualOutput:
        """Make the counterfactual of `image` with `target` (free text or structured findings).

        Args:
            image: 2-D grey array or PIL image (any size from 32 to 8192 pixels a side).
            target: a request ("small left pleural effusion") or a list of findings.
            seed: the initial-noise seed; same seed, same output. With start "inversion" and no seed
                optimisation the output does not depend on it.
            optimize_seed: run the long-tail seed optimisation (Algorithm 2).
            steps, guidance, start, detail: `SamplingConfig` fields; None takes the checkpoint's.
            references: optional reference images of the target (else checkpoint centroids).
            progress: called as progress(stage, step, total, current L_P or None).
            seed_opt: seed-optimisation settings (None: the checkpoint's).
            region: None for the automatic edit region, or the user's: (H, W) of the image's size,
                nonzero inside (`model.regions.check_user_region`; `RegionError` when unusable).
            candidates: 1 to `MAX_CANDIDATES` candidates sampled in one batch (the first from the
                starting or optimised seed, the others from fresh noise of `seed`); the best one
                that passes its verdict is returned, with every candidate's verdict.
        """
        request = Request(image, target, seed, optimize_seed, references, region, candidates, progress)
        (out,) = self.batch([request], steps, guidance, start, detail, seed_opt)
        if isinstance(out, Exception):
            raise out
        return out

    def batch(
        self,
        requests: Sequence[Request],
        steps: int | None = None,
        guidance: float | None = None,
        start: str | None = None,
        detail: float | None = None,
        seed_opt: SeedOptConfig | None = None,
    ) -> list[CounterfactualOutput | Exception]:
        """Several requests (`Request`: `__call__`'s per-request arguments) with the same sampling
        settings, their DDIM inversions, seed optimisations and samplings each run as one batch.

        Each request keeps its own seed, candidates, region, progress and result, which is the one
        `__call__` gives it alone (up to the float rounding of a larger batch). A request that fails
        on its own input (an unreadable image, a region that does not fit, a target without a
        centroid: a ValueError) gets its exception in its place; the others go on. The settings
        are checked first, for the whole batch.
        """
        sampling, seed_opt = self.check_inputs(steps, guidance, start, detail, seed_opt)
        prepared: list[_Prepared | Exception] = []
        for request in requests:
            try:
                prepared.append(self._prepare(request, seed_opt))
            except ValueError as exc:  # ImageInputError, RegionError, CheckpointError, NoFindingRecognised
                prepared.append(exc)
        live = [p for p in prepared if isinstance(p, _Prepared)]
        if live:
            self._generate(live, sampling, seed_opt)
        out: list[CounterfactualOutput | Exception] = []
        for p in prepared:
            if isinstance(p, Exception):
                out.append(p)
                continue
            try:
                out.append(self._finish(p, sampling, seed_opt))
            except ValueError as exc:
                out.append(exc)
        return out

    def _prepare(self, request: Request, seed_opt: SeedOptConfig) -> _Prepared:
        """Steps 1-4 of one request, and its reference centroid (Algorithm 2, lines 2-3)."""
        p = _Prepared(request, request.progress or (lambda *a: None), check_candidates(request.candidates))
        # 2. encode the input, 3. condition on the target, 4. locate its anatomy (one "encode" stage)
        t = time.perf_counter()
        p.grey = cap_size(to_unit_grey(request.image, p.notes), p.notes)
        p.conditioning = self.condition(request.target)
        if request.region is not None:
            side = regions.requested_side(p.conditioning.findings)
            p.user = regions.check_user_region(request.region, p.grey.shape, side)
        p.encoded = self.encode(p.grey, p.notes)
        p.anatomy = self.locate(p.encoded.x)
        if p.anatomy.source != "segmenter":
            p.notes.append("the segmenter found no lungs on this input: the edit region uses a standard chest frame")
        if request.optimize_seed:
            p.centroid = self.centroid_for(p.conditioning.labels, request.references, p.notes)
        p.timings["encode"] = time.perf_counter() - t
        p.report("encode", 1, 1, None)
        return p

    def _generate(self, live: list[_Prepared], sampling: SamplingConfig, seed_opt: SeedOptConfig) -> None:
        """Steps 5-7 for every request in `live`, batched across them: the starting seeds (the DDIM
        inversions in one batch), seed optimisation (`optimize_seeds`) and DDIM sampling (each seed
        row conditioned on its own request). Sets each request's `history`, `guarded`, `z_path`."""
        uncond = live[0].conditioning.uncond  # the empty text's: the same for every request

        # 5. the starting seed(s): noise from each request's seed, the first row the inversion of its z^n
        t = time.perf_counter()
        z_T = [self._noise(p.request.seed, seed_opt.batch_seeds if p.request.optimize_seed else 1) for p in live]
        if sampling.start == "inversion":
            with torch.no_grad():
                inverted = self.diffusion.invert(torch.cat([p.encoded.z_path for p in live]), uncond, sampling.steps)
            for k, p in enumerate(live):
                z_T[k][0] = inverted[k]
                p.timings["inversion"] = time.perf_counter() - t
                p.report("inversion", 1, 1, None)
        z_start = [z[:1].clone() for z in z_T]  # the seed a request without seed optimisation samples from

        # 6. seed optimisation (Algorithm 2), the requests that ask for it in one batch
        todo = [k for k, p in enumerate(live) if p.request.optimize_seed]
        if todo:
            t = time.perf_counter()
            counts = [len(z_T[k]) for k in todo]
            render = self.renderer(
                torch.cat([live[k].encoded.z_id.expand(n, -1, -1, -1) for k, n in zip(todo, counts)]),
                torch.cat([live[k].conditioning.cond.expand(n, -1, -1) for k, n in zip(todo, counts)]),
                uncond,
                sampling.guidance,
                self.diffusion.timesteps(sampling.steps)[0],
            )
            with torch.enable_grad():  # Algorithm 2 needs gradients also when the caller is in no_grad
                results = optimize_seeds(
                    torch.cat([z_T[k] for k in todo]),
                    [j for j, n in enumerate(counts) for _ in range(n)],
                    render,
                    torch.cat([live[k].centroid for k in todo]),
                    self.contrastive.encode_image,
                    seed_opt,
                    [_seed_opt_callback(live[k].report) for k in todo],
                )
            for k, result in zip(todo, results):
                z_T[k], live[k].history = result.seed, result.history
                live[k].timings["seed_optimization"] = time.perf_counter() - t  # its iterations: len(history) - 1

        # 7. sample z^n*: per request its seed, the guard's starting-seed sample and the extra candidates
        rows = []
        for k, p in enumerate(live):
            p.guarded = p.request.optimize_seed and seed_opt.guard and not torch.equal(z_T[k], z_start[k])
            rows.append(
                torch.cat(
                    [z_T[k], *([z_start[k]] if p.guarded else []), self.extra_seeds(p.request.seed, p.candidates - 1)]
                )
            )
        t = time.perf_counter()
        cond = torch.cat([p.conditioning.cond.expand(len(r), -1, -1) for p, r in zip(live, rows)])

        def progress(i: int, n: int) -> None:
            for p in live:
                p.report("sampling", i, n, None)

        with torch.no_grad():
            z_path = self.diffusion.sample(
                torch.cat(rows), cond, uncond, sampling.steps, sampling.guidance, callback=progress
            )
        for p, part in zip(live, z_path.split([len(r) for r in rows])):
            p.z_path = part
            p.timings["sampling"] = time.perf_counter() - t

    def _noise(self, seed: int, count: int) -> torch.Tensor:
        # Drawn on the CPU and moved: a seed gives the same noise on every device and in every dtype.
        g = torch.Generator().manual_seed(int(seed))
        latent = self.diffusion.config.latent_size
        return self.tensor(torch.randn((count, 1, latent, latent), generator=g))

    def _finish(self, p: _Prepared, sampling: SamplingConfig, seed_opt: SeedOptConfig) -> CounterfactualOutput:
        """Steps 8-12 of one request, from its sampled pathology channels `p.z_path`."""
        encoded, conditioning, notes, timings, seed = p.encoded, p.conditioning, p.notes, p.timings, p.request.seed
        z_path, user, anatomy = p.z_path, p.user, p.anatomy

        # 8. compose and decode (Eq. 3), then the paired editor carries the change onto the input
        t = time.perf_counter()
        user_grid = None if user is None else native_to_grid(user.astype(np.float32), self.resolution) > 0
        findings = self.request_findings(conditioning, encoded)  # read once: prior and editor share it
        prior = regions.request_prior(anatomy, findings) if user_grid is None else user_grid
        with torch.no_grad():
            raw = self.compose(encoded.z_id, z_path, encoded.x, encoded.recon, 0.0)
            x_cf = self.edit(encoded, raw, prior, findings)
            generated = restore_detail(raw, encoded.x, encoded.recon, sampling.detail)
        timings["decode"] = time.perf_counter() - t
        p.report("decode", 1, 1, None)

        # 9. guard: keep the optimised sample (first) or the starting seed's (second)
        keep: bool | None = None
        if p.guarded:
            verdict = self.guard(z_path[:2], conditioning.labels)
            keep = verdict.keep
            if not keep:
                notes.append(verdict.note)
            pick = [0 if keep else 1, *range(2, len(x_cf))]
            x_cf, generated = x_cf[pick], generated[pick]

        # 10. edit regions, 11. verdicts, one per candidate; the best that passes is returned
        t = time.perf_counter()
        weights = [self.edit_region(prior, x_cf[i : i + 1], encoded.x) for i in range(len(x_cf))]
        edited = torch.cat([self.apply_weight(encoded.x, x_cf[i : i + 1], w) for i, w in enumerate(weights)])
        verdicts = self.judge(encoded, edited, conditioning, anatomy)
        chosen = choose(verdicts)
        timings["verdict"] = time.perf_counter() - t
        seeds = [int(seed)] + [extra_seed(seed, k) for k in range(1, p.candidates)]
        listed = [{"seed": sd, "verdict": v.to_dict()} for sd, v in zip(seeds, verdicts)]

        # 12. quality report, and the chosen change carried onto the input's own pixels
        t = time.perf_counter()
        quality = self.quality(encoded, edited[chosen : chosen + 1], conditioning.labels, notes)
        timings["quality"] = time.perf_counter() - t
        t = time.perf_counter()
        delta = to_numpy((x_cf[chosen, 0].clamp(-1, 1) - encoded.x[0, 0]) / 2)  # model units [-1, 1] -> [0, 1]
        result, used = composite(p.grey, delta, weights[chosen], user)
        timings["composite"] = time.perf_counter() - t
        return CounterfactualOutput(
            image=result,
            input_image=p.grey,
            difference=result - p.grey,
            region=used,
            region_source="automatic" if user is None else "user",
            model_image=to_numpy((generated[chosen, 0].clamp(-1, 1) + 1) / 2),
            model_input=to_numpy((encoded.x[0, 0] + 1) / 2),
            condition=conditioning.text,
            seed=seeds[chosen],
            seed_optimized=p.request.optimize_seed and chosen == 0,
            lp_history=p.history,
            timings=timings,
            quality=quality,
            verdict=verdicts[chosen],
            candidates=listed,
            chosen=chosen,
            seed_kept=keep,
        )

    # --- the steps --------------------------------------------------------------------------
    def check_inputs(
        self,
        steps: int | None = None,
        guidance: float | None = None,
        start: str | None = None,
        detail: float | None = None,
        seed_opt: SeedOptConfig | None = None,
    ) -> tuple[SamplingConfig, SeedOptConfig]:
        """1. The call's settings, each None taken from the checkpoint, validated (ValueError)."""
        overrides = {
            k: v
            for k, v in {"steps": steps, "guidance": guidance, "start": start, "detail": detail}.items()
            if v is not None
        }
        sampling = dataclasses.replace(self.sampling, **overrides)
        if seed_opt is not None and not isinstance(seed_opt, SeedOptConfig):
            raise TypeError(f"seed_opt must be a SeedOptConfig, got {type(seed_opt).__name__}")
        return sampling, seed_opt or self.seed_optimization

    def encode(self, image, notes: list[str] | None = None) -> EncodedImage:
        """2. Preprocess `image` (`model.preprocess`; what was done is added to `notes`) and encode
        it: z = E_VAE(x) (Algorithm 2, line 4), split into z^{1:n-1} and z^n, and the
        reconstruction D_VAE(T(z)) that detail restoration and the OOD score compare against."""
        x = self.tensor(to_model_input(image, self.resolution, notes))
        if not torch.isfinite(x).all():
            raise ImageInputError("image contains NaN or infinite values")
        with torch.no_grad():
            dist = self.vae.encode(x)
            z_id, z_path = self.vae.split(dist.mean)
            recon = self.vae.decode(self.transformer(dist.mean))
        return EncodedImage(x, z_id, z_path, recon)

    def condition(self, target) -> Conditioning:
        """3. The target (free text, refined, or structured findings) -> the canonical condition
        text, its labels and the denoiser's conditional and unconditional contexts."""
        text, labels, findings = self.condition_for(target)
        cond, uncond = self.conditioning(text)
        return Conditioning(text, labels, findings, cond, uncond)

    def locate(self, x: torch.Tensor) -> regions.Anatomy:
        """4. The input's lungs and heart on the model grid (the segmenter; a standard chest frame
        where it finds no plausible lungs)."""
        with torch.no_grad():
            masks = self.segmenter.masks(x)[0].cpu().numpy()
        return regions.Anatomy.from_masks(masks)

    def starting_seed(
        self, encoded: EncodedImage, conditioning: Conditioning, sampling: SamplingConfig, seed: int, batch: int = 1
    ) -> torch.Tensor:
        """4. `batch` seeds z_T^n ~ N(0, I) from `seed` (Algorithm 2, line 1), (batch, 1, h, w) in
        model space; with start "inversion" the first is the DDIM inversion of the input's z^n."""
        z_T = self._noise(seed, batch)
        if sampling.start == "inversion":
            with torch.no_grad():
                z_T[0] = self.diffusion.invert(encoded.z_path, conditioning.uncond, sampling.steps)[0]
        return z_T

    def optimize_seed(
        self,
        z_T: torch.Tensor,
        encoded: EncodedImage,
        conditioning: Conditioning,
        sampling: SamplingConfig,
        seed_opt: SeedOptConfig,
        references: Sequence | None = None,
        notes: list[str] | None = None,
        progress: Progress | None = None,
    ) -> SeedOptResult:
        """5. Algorithm 2: the centroid mu_z of `references` or the checkpoint's (lines 2-3), then
        seeds `z_T` moved to lower L_P (lines 5-13); the best seed is returned."""
        report = progress or (lambda *a: None)
        centroid = self.centroid_for(conditioning.labels, references, notes if notes is not None else [])
        render = self.renderer(
            encoded.z_id,
            conditioning.cond,
            conditioning.uncond,
            sampling.guidance,
            self.diffusion.timesteps(sampling.steps)[0],
        )
        with torch.enable_grad():  # Algorithm 2 needs gradients also when the caller is in no_grad
            return run_seed_optimization(
                z_T,
                render,
                centroid,
                self.contrastive.encode_image,
                seed_opt,
                callback=lambda i, n, lp: report("seed_optimization", i, n, lp),
            )

    def sample(
        self,
        seeds: torch.Tensor,
        conditioning: Conditioning,
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """6. DDIM with classifier-free guidance from `seeds` (B, 1, h, w) to z^n (B, 1, h, w)."""
        report = progress or (lambda *a: None)
        with torch.no_grad():
            return self.diffusion.sample(
                seeds,
                conditioning.cond,
                conditioning.uncond,
                sampling.steps,
                sampling.guidance,
                callback=lambda i, n: report("sampling", i, n, None),
            )

    def extra_seeds(self, seed: int, count: int) -> torch.Tensor:
        """The extra candidates' seeds z_T^n, (count, 1, h, w) in model space, candidate k from
        `extra_seed(seed, k)`: a request with more candidates keeps the fewer ones' seeds."""
        latent = self.diffusion.config.latent_size
        out = torch.empty((count, 1, latent, latent))
        for k in range(count):
            out[k] = torch.randn((1, latent, latent), generator=torch.Generator().manual_seed(extra_seed(seed, k + 1)))
        return self.tensor(out)

    def compose(
        self, z_id: torch.Tensor, z_path: torch.Tensor, x: torch.Tensor, recon: torch.Tensor, detail: float
    ) -> torch.Tensor:
        """7. The images of pathology channels `z_path` (B, 1, h, w) in the input's identity `z_id`:
        f = T({z^{1:n-1}, z^n}) (Eq. 3), decoded, with the input `x`'s fine detail restored
        (`model.detail`; `recon` is x's reconstruction). (B, 1, R, R) on [-1, 1]."""
        x_cf = self.vae.decode(self.transformer(self.vae.join(z_id.expand(len(z_path), -1, -1, -1), z_path))).clamp(
            -1, 1
        )
        return restore_detail(x_cf, x, recon, detail)

    def guard(self, z_path: torch.Tensor, labels: Sequence[str]) -> GuardVerdict:
        """8. `SeedOptConfig.guard` (not in the paper): the findings head's verdict on z^n sampled
        from the optimised seed (`z_path[0]`) against the starting seed's (`z_path[1]`)."""
        with torch.no_grad():
            optimized, initial = (float(v) for v in self.target_score(z_path, labels))
        return GuardVerdict(keep_optimized(optimized, initial), optimized, initial)

    def request_findings(self, conditioning: Conditioning, encoded: EncodedImage) -> list:
        """The request's findings, which the edit region's prior (`regions.request_prior`) and the
        editor read; for "no finding", the removal of each finding the generator's own
        findings head sees on the input's pathology channel (never the evaluation classifier, which
        judges the result)."""
        from .refine import StructuredFinding

        named = [f for f in conditioning.findings if f.label != NO_FINDING and f.status != "uncertain"]
        if named:
            return named
        with torch.no_grad():
            p = torch.sigmoid(self.findings_head(encoded.z_path))[0]
        return [
            StructuredFinding(label=label, status="absent")
            for i, label in enumerate(CHEXPERT_LABELS)
            if label not in (NO_FINDING, SUPPORT_DEVICES) and float(p[i]) >= 0.5
        ]

    def edit(self, encoded: EncodedImage, raw: torch.Tensor, prior: np.ndarray, findings: list) -> torch.Tensor:
        """8b. The paired editor (`model.editor`): the input plus the change it draws from the
        generator's decoding `raw` (B, 1, R, R) of each sampled z^n, inside `prior`, for the request's
        `findings` (`request_findings`). (B, 1, R, R)."""
        b = len(raw)
        request = self.tensor(request_vector(findings)).expand(b, -1)
        prior_t = self.tensor(prior.astype(np.float32))[None, None].expand(b, -1, -1, -1)
        x = encoded.x.expand(b, -1, -1, -1)
        change = self.editor(x, raw.clamp(-1, 1), encoded.recon.clamp(-1, 1).expand(b, -1, -1, -1), prior_t, request)
        return (x + change).clamp(-1, 1)

    def edit_region(self, prior: np.ndarray, x_cf: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        """10. The edit region's weight (R, R) in [0, 1] for one candidate `x_cf` (1, 1, R, R): the
        prior (the request's anatomy on this input, or the user's region) where the model changed
        the image (`regions.edit_weight`)."""
        change = to_numpy((x_cf[0, 0].clamp(-1, 1) - x[0, 0]).abs() / 2)
        return regions.edit_weight(prior, change)

    @staticmethod
    def apply_weight(x: torch.Tensor, x_cf: torch.Tensor, weight: np.ndarray) -> torch.Tensor:
        """The candidate as it will be returned, on the grid: x + w (x_cf - x)."""
        return x + (x_cf.clamp(-1, 1) - x) * torch.from_numpy(weight).to(x)[None, None]

    def judge(
        self, encoded: EncodedImage, edited: torch.Tensor, conditioning: Conditioning, anatomy: regions.Anatomy
    ) -> list[Verdict]:
        """11. Each candidate's verdict (`model.verdict.judge`): the evaluation classifier on the input
        and on each edited candidate (B, 1, R, R), the side of its change, the input's OOD score."""
        cfg = self.verdict_config
        with torch.no_grad():
            p = torch.sigmoid(self.eval_classifier(torch.cat([encoded.x, edited])))
        ood_score = self.ood_score(encoded)
        added = [f.label for f in conditioning.findings if f.status == "present" and f.label != NO_FINDING]
        removed = [f.label for f in conditioning.findings if f.status == "absent" and f.label != NO_FINDING]
        if not added and not removed:
            # "No finding": every finding the input shows must go (devices are not findings to remove).
            removed = [
                label
                for i, label in enumerate(CHEXPERT_LABELS)
                if label not in (NO_FINDING, SUPPORT_DEVICES) and float(p[0, i]) >= cfg.threshold
            ]
        side = regions.requested_side(conditioning.findings)
        p_in = {label: float(p[0, i]) for i, label in enumerate(CHEXPERT_LABELS)}
        out = []
        for b in range(len(edited)):
            p_out = {label: float(p[b + 1, i]) for i, label in enumerate(CHEXPERT_LABELS)}
            change = to_numpy((edited[b, 0] - encoded.x[0, 0]).abs() / 2)
            share = None if side is None else regions.side_share(change, side, anatomy.midline)
            out.append(judge(p_in, p_out, added, removed, side, share, ood_score, cfg))
        return out

    def quality(
        self, encoded: EncodedImage, x_cf: torch.Tensor, labels: Sequence[str], notes: list[str] | None = None
    ) -> QualityReport:
        """12. The evaluation classifier on the counterfactual and the input, identity similarity
        (E_ID), and the input's OOD score; `notes` are carried into the report."""
        x = encoded.x
        with torch.no_grad():
            p_cf = torch.sigmoid(self.eval_classifier(x_cf))[0]
            p_in = torch.sigmoid(self.eval_classifier(x))[0]
            sim = float((self.identity_encoder(x) * self.identity_encoder(x_cf)).sum())
        idx = label_indices(labels)
        return QualityReport(
            target_probability={CHEXPERT_LABELS[i]: float(p_cf[i]) for i in idx},
            input_probability={CHEXPERT_LABELS[i]: float(p_in[i]) for i in idx},
            identity_similarity=sim,
            ood_score=self.ood_score(encoded),
            notes=list(notes or []),
        )

    def ood_score(self, encoded: EncodedImage) -> float:
        """The input's reconstruction error in training SDs above the training mean (`config["ood"]`);
        above the verdict's `ood_limit` (3) the input is unlike the training data."""
        mse = float(((encoded.recon - encoded.x) ** 2).mean())
        ood = self.config["ood"]
        return (mse - ood["recon_mse_mean"]) / max(ood["recon_mse_std"], 1e-8)

    def target_score(self, z_path: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """The findings head's mean probability of `labels` on each z^n of the batch, (B,)."""
        return torch.sigmoid(self.findings_head(z_path))[:, label_indices(labels)].mean(dim=1)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor from any device and dtype (bf16 included) as a float32 array on the host."""
    return t.detach().float().cpu().numpy()


def check_candidates(candidates) -> int:
    if not isinstance(candidates, (int, np.integer)) or isinstance(candidates, bool):
        raise ValueError(f"candidates must be an integer, got {candidates!r}")
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {candidates}")
    return int(candidates)


def extra_seed(seed: int, k: int) -> int:
    """The seed of candidate k >= 1 of a request with seed `seed` (candidate 0 uses `seed` itself)."""
    return (int(seed) * 1_000_003 + k) % 2**63


def choose(verdicts: Sequence[Verdict]) -> int:
    """The candidate to return: the best-scoring one that passes, else the best-scoring one; ties
    go to the earlier (the first candidate is the starting or optimised seed)."""
    passing = [i for i, v in enumerate(verdicts) if v.passed]
    pool = passing or range(len(verdicts))
    return max(pool, key=lambda i: (verdicts[i].score, -i))


def default_model_card(config: dict) -> str:
    state, side = config["training"]["state"], config["preprocessing"]["resolution"]
    return f"""# whatif-cxr checkpoint ({config["preset"]})

State: {state}. Preset `{config["preset"]}`, {side}x{side} grey radiographs.

Intended use: demonstration and testing of the whatif-cxr software. Every image it makes is
synthetic. **Not for clinical use.** An untrained checkpoint produces noise-like images; it exists
so that the pipeline, the service and their tests run without a trained model.
"""
