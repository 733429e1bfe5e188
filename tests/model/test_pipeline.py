"""CounterfactualPipeline on an untrained tiny checkpoint: determinism, seed optimisation, errors."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from model import regions
from model.modeling import CheckpointError
from model.pipeline import MAX_CANDIDATES, CounterfactualPipeline
from model.preprocess import ImageInputError, load_image_file, to_model_input, to_unit_grey
from model.presets import get_preset
from model.refine import NoFindingRecognised
from model.regions import RegionError
from model.seed_optimization import SeedOptConfig, optimize_seed
from model.verdict import VERDICTS
from training.centroids import compute_centroids
from training.phantom.renderer import render
from whatif.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pipe = CounterfactualPipeline.from_preset("tiny", seed=0)
    pipe.centroids = compute_centroids(pipe, m=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return CounterfactualPipeline.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def xray():
    return render(3, [], 0, 96).image


# The tiny checkpoint's own settings (Algorithm 2's Adam, no guard), with test-sized changes.
TINY_OPT = get_preset("tiny").seed_optimization
FAST = dataclasses.replace(TINY_OPT, max_iters=4)


def tiny_opt(**changes) -> SeedOptConfig:
    return dataclasses.replace(TINY_OPT, **changes)


def test_output_contract(pipe, xray):
    stages = []
    out = pipe(
        xray, "small left pleural effusion", seed=2, steps=4, seed_opt=FAST, progress=lambda *a: stages.append(a[0])
    )
    # the result at the input's size (96), the generator's own output on the model grid (64)
    assert out.image.shape == out.input_image.shape == out.region.shape == (96, 96) and out.image.dtype == np.float32
    assert out.model_image.shape == out.model_input.shape == (64, 64)
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert np.array_equal(out.difference, out.image - out.input_image)
    assert np.array_equal(out.image[~out.region], out.input_image[~out.region])
    assert np.array_equal(out.input_image, to_unit_grey(xray))
    assert out.condition == "small left pleural effusion" and out.seed == 2
    assert out.verdict.status in VERDICTS and out.region_source == "automatic"
    assert out.candidates == [{"seed": 2, "verdict": out.verdict.to_dict()}] and out.chosen == 0
    # Seconds per stage and nothing else (the service shows them as `timings_s`).
    stages_timed = {"encode", "inversion", "seed_optimization", "sampling", "decode", "verdict", "quality", "composite"}
    assert set(out.timings) <= stages_timed
    assert set(out.timings) >= {"encode", "seed_optimization", "sampling", "decode"}
    assert out.quality.target_probability.keys() == {"Pleural Effusion"}
    assert -1.0 <= out.quality.identity_similarity <= 1.0 + 1e-6
    assert {"encode", "seed_optimization", "sampling", "decode"} <= set(stages)
    assert len(out.lp_history) >= 2


def test_save_load_gives_identical_outputs_and_same_seed_same_image(pipe, checkpoint, tmp_path, xray):
    a = pipe(xray, "moderate cardiomegaly", seed=5, steps=3, seed_opt=FAST)
    b = pipe(xray, "moderate cardiomegaly", seed=5, steps=3, seed_opt=FAST)
    assert np.array_equal(a.model_image, b.model_image)
    pipe.save_pretrained(tmp_path / "again")
    c = CounterfactualPipeline.from_pretrained(tmp_path / "again")(
        xray, "moderate cardiomegaly", seed=5, steps=3, seed_opt=FAST
    )
    assert np.array_equal(a.model_image, c.model_image)
    d = pipe(xray, "moderate cardiomegaly", seed=6, steps=3, seed_opt=FAST, start="noise")
    e = pipe(xray, "moderate cardiomegaly", seed=5, steps=3, seed_opt=FAST, start="noise")
    assert not np.array_equal(d.model_image, e.model_image)


def test_inversion_start_keeps_the_input_and_ignores_the_seed(pipe, xray):
    # Inversion is the default; without seed optimisation the seed plays no part.
    a = pipe(xray, "moderate cardiomegaly", seed=5, steps=3, optimize_seed=False)
    b = pipe(xray, "moderate cardiomegaly", seed=6, steps=3, optimize_seed=False, start="inversion")
    c = pipe(xray, "moderate cardiomegaly", seed=5, steps=3, optimize_seed=False, start="noise")
    assert np.array_equal(a.model_image, b.model_image) and not np.array_equal(a.model_image, c.model_image)
    assert "inversion" in a.timings and "inversion" not in c.timings
    with pytest.raises(ValueError, match="start must be one of inversion, noise"):
        pipe(xray, "mild edema", optimize_seed=False, start="reference")


def test_ddim_inversion_returns_to_the_latent(pipe):
    # Sampling (guidance 1, the unconditional model) from the inverted seed lands near the latent it
    # came from; from a random seed it does not. Untrained tiny UNet, so the bound is loose.
    uncond = pipe.contrastive.text_tokens([""])
    z = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():
        back = pipe.diffusion.sample(pipe.diffusion.invert(z, uncond, 10), uncond, uncond, 10, 1.0)
        other = pipe.diffusion.sample(torch.randn(1, 1, 16, 16), uncond, uncond, 10, 1.0)
    assert float(((back - z) ** 2).mean()) < 0.05 * float(((other - z) ** 2).mean())


@pytest.mark.parametrize("method", ["x0", "shortcut", "full"])
def test_gradient_reaches_the_seed(pipe, xray, method):
    x = torch.from_numpy(to_unit_grey(xray)).float()

    x = to_model_input(xray, 64)
    z_id, _ = pipe.vae.split(pipe.vae.encode(x).mean.detach())
    cond = pipe.contrastive.text_tokens(["mild edema"])
    uncond = pipe.contrastive.text_tokens([""])
    render_fn = pipe.renderer(z_id, cond, uncond, 3.0, pipe.diffusion.timesteps(4)[0])
    z = torch.randn(1, 1, 16, 16, requires_grad=True)
    loss = pipe.contrastive.encode_image(render_fn(z, method, 2)).sum()
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["x0", "shortcut"])
def test_seed_optimisation_lowers_lp(pipe, xray, method):
    out = pipe(
        xray, "large right pneumothorax", seed=1, steps=4, seed_opt=tiny_opt(method=method, max_iters=8, patience=8)
    )
    assert out.lp_history[-1] < out.lp_history[0]
    assert all(b <= a for a, b in zip(out.lp_history, out.lp_history[1:]))  # best-so-far never rises


def test_seed_optimisation_lowers_lp_with_normalized_steps(pipe, xray):
    cfg = tiny_opt(optimizer="normalized", lr=0.1, max_iters=8, patience=8)
    out = pipe(xray, "large right pneumothorax", seed=1, steps=4, seed_opt=cfg)
    assert out.lp_history[-1] < out.lp_history[0]


def test_normalized_steps_have_rms_lr_and_follow_the_gradient():
    # L = sum(w * z): the gradient is w, large on one element and tiny on the others. Each seed of
    # the batch moves by lr in RMS, and almost all of it on the large-gradient element; Adam moves
    # every element by about lr whatever its gradient, which is what the normalized step avoids.
    from model.seed_optimization import NormalizedGradientDescent

    w = torch.full((2, 1, 2, 2), 1e-3)
    w[:, 0, 0, 0] = torch.tensor([1.0, 50.0])
    moves = {}
    for name, make in (("ngd", NormalizedGradientDescent), ("adam", torch.optim.Adam)):
        z = torch.zeros(2, 1, 2, 2, requires_grad=True)
        opt = make([z], lr=0.1)
        (w * z).sum().backward()
        opt.step()
        moves[name] = -z.detach()
    rms = moves["ngd"].pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rms, torch.full((2,), 0.1), atol=1e-6)
    assert (moves["ngd"][:, 0, 0, 0] > 0.19).all() and (moves["ngd"][:, 0, 1:].abs() < 1e-3).all()
    assert (moves["adam"][:, 0, 1:] > 0.09).all()


def test_seed_opt_config_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="adam or normalized"):
        SeedOptConfig(optimizer="sgd")


def test_early_stop_when_lp_stops_falling():
    centroid = torch.zeros(1, 4)
    res = optimize_seed(
        torch.zeros(1, 1, 2, 2),
        lambda z, m, s: z,
        centroid,
        lambda img: torch.zeros(img.shape[0], 4) + 1.0,
        tiny_opt(max_iters=50, patience=3),
    )
    assert res.iterations == 3 and len(res.history) == 4


@pytest.mark.parametrize("optimized_wins", [True, False])
def test_guard_keeps_the_optimised_seed_only_if_the_findings_head_agrees(pipe, xray, monkeypatch, optimized_wins):
    kw = dict(seed=1, steps=3, start="noise")
    cfg = tiny_opt(max_iters=4, patience=4)
    plain = pipe(xray, "mild edema", optimize_seed=False, **kw)
    optimised = pipe(xray, "mild edema", seed_opt=cfg, **kw)
    assert not np.allclose(plain.model_image, optimised.model_image, atol=1e-3)  # the seed did move
    judged = []

    def score(z_path, labels):  # the findings head's verdict, fixed: first the optimised, then the start
        judged.append((z_path.shape[0], list(labels)))
        return torch.tensor([0.8, 0.2] if optimized_wins else [0.2, 0.8])

    monkeypatch.setattr(pipe, "target_score", score)
    guarded = pipe(xray, "mild edema", seed_opt=dataclasses.replace(cfg, guard=True), **kw)
    assert judged == [(2, ["Edema"])]
    assert guarded.lp_history == optimised.lp_history
    assert guarded.seed_kept is optimized_wins and optimised.seed_kept is None and plain.seed_kept is None
    assert "seed_optimization_kept" not in guarded.timings  # a verdict, not seconds
    # both seeds are sampled in one batch, so the kept image matches its unguarded twin to float error
    assert np.allclose(guarded.model_image, (optimised if optimized_wins else plain).model_image, atol=1e-4)
    undone = [n for n in guarded.quality.notes if n.startswith("seed optimisation undone")]
    assert undone == (
        []
        if optimized_wins
        else [
            "seed optimisation undone: the findings head scored the target 0.20 "
            "on the optimised seed against 0.80 on the starting seed"
        ]
    )


def test_target_score_reads_the_findings_head_on_the_target_labels(pipe):
    z = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        p = torch.sigmoid(pipe.findings_head(z))
        got = pipe.target_score(z, ["Edema", "Fracture"])
    idx = [pipe.config["labels"].index("Edema"), pipe.config["labels"].index("Fracture")]
    assert torch.allclose(got, p[:, idx].mean(dim=1))


def test_the_public_steps_make_what_the_call_makes(pipe, xray):
    out = pipe(xray, "moderate cardiomegaly", seed=4, steps=3, seed_opt=FAST)
    # 1. check inputs: the call's settings over the checkpoint's
    sampling, seed_opt = pipe.check_inputs(steps=3, seed_opt=FAST)
    assert sampling == dataclasses.replace(pipe.sampling, steps=3) and seed_opt is FAST
    assert pipe.check_inputs()[1] == pipe.seed_optimization == TINY_OPT
    with pytest.raises(ValueError, match="guidance must be between 0 and 30"):
        pipe.check_inputs(guidance=31.0)
    with pytest.raises(TypeError, match="SeedOptConfig"):
        pipe.check_inputs(seed_opt={"lr": 0.1})
    # 2.-9.
    encoded = pipe.encode(xray)
    conditioning = pipe.condition("moderate cardiomegaly")
    assert conditioning.text == out.condition and conditioning.labels == ["Cardiomegaly"]
    z_T = pipe.starting_seed(encoded, conditioning, sampling, seed=4, batch=seed_opt.batch_seeds)
    result = pipe.optimize_seed(z_T, encoded, conditioning, sampling, seed_opt)
    assert result.history == out.lp_history
    with torch.no_grad():  # Algorithm 2 gets its gradients under the caller's no_grad too
        assert pipe.optimize_seed(z_T, encoded, conditioning, sampling, seed_opt).history == result.history
    z_path = pipe.sample(result.seed, conditioning, sampling)
    with torch.no_grad():
        raw = pipe.compose(encoded.z_id, z_path, encoded.x, encoded.recon, 0.0)
        generated = pipe.compose(encoded.z_id, z_path, encoded.x, encoded.recon, sampling.detail)
    assert np.array_equal(((generated[0, 0].clamp(-1, 1) + 1) / 2).numpy(), out.model_image)
    verdict = pipe.guard(pipe.sample(torch.cat([result.seed, z_T[:1]]), conditioning, sampling), conditioning.labels)
    assert verdict.keep == (verdict.optimized_score >= verdict.initial_score)
    # 4., 8b., 10.-12.
    anatomy = pipe.locate(encoded.x)
    findings = pipe.request_findings(conditioning, encoded)
    prior = regions.request_prior(anatomy, findings)
    with torch.no_grad():
        x_cf = pipe.edit(encoded, raw, prior, findings)
    weight = pipe.edit_region(prior, x_cf, encoded.x)
    edited = pipe.apply_weight(encoded.x, x_cf, weight)
    assert pipe.judge(encoded, edited, conditioning, anatomy)[0].to_dict() == out.verdict.to_dict()
    quality = pipe.quality(encoded, edited, conditioning.labels)
    assert quality.target_probability == out.quality.target_probability
    assert quality.identity_similarity == out.quality.identity_similarity


def test_batched_seeds_keep_the_best(pipe, xray):
    out = pipe(xray, "mild cardiomegaly", seed=1, steps=3, seed_opt=tiny_opt(max_iters=3, batch_seeds=3))
    assert out.model_image.shape == (64, 64)


def test_candidates_are_judged_and_the_best_passing_one_returned(pipe, xray, monkeypatch):
    one = pipe(xray, "mild edema", seed=3, steps=3, optimize_seed=False)
    three = pipe(xray, "mild edema", seed=3, steps=3, optimize_seed=False, candidates=3)
    assert [c["seed"] for c in three.candidates][0] == 3 and len({c["seed"] for c in three.candidates}) == 3
    # the first candidate is the one a single-candidate request makes, to float error (same batch math)
    assert three.candidates[0]["verdict"]["status"] == one.verdict.status
    assert three.verdict.to_dict() == three.candidates[three.chosen]["verdict"]
    passing = [i for i, c in enumerate(three.candidates) if c["verdict"]["passed"]]
    assert three.chosen in (passing or range(3))
    for bad in (0, MAX_CANDIDATES + 1, 2.5, True):
        with pytest.raises(ValueError, match="candidates"):
            pipe(xray, "mild edema", steps=3, optimize_seed=False, candidates=bad)


def test_a_user_region_bounds_the_change(pipe, xray):
    mask = np.zeros(xray.shape, bool)
    mask[40:70, 55:90] = True  # the viewer's right: the patient's left
    out = pipe(xray, "moderate left pleural effusion", steps=3, optimize_seed=False, region=mask)
    assert out.region_source == "user" and not (out.region & ~mask).any()
    assert np.array_equal(out.image[~mask], out.input_image[~mask])
    with pytest.raises(RegionError, match="patient's right"):
        pipe(xray, "moderate right pleural effusion", steps=3, optimize_seed=False, region=mask)
    with pytest.raises(RegionError, match="must match"):
        pipe(xray, "moderate left pleural effusion", steps=3, optimize_seed=False, region=mask[:50])
    with pytest.raises(RegionError, match="empty"):
        pipe(xray, "moderate left pleural effusion", steps=3, optimize_seed=False, region=mask & False)


def test_a_non_square_input_comes_back_at_its_own_size(pipe):
    wide = render(4, [], 0, 128).image[16:112, :]  # 128 wide, 96 high
    out = pipe(wide, "moderate cardiomegaly", steps=3, optimize_seed=False)
    assert out.image.shape == (96, 128) and np.array_equal(out.image[~out.region], wide[~out.region] / np.float32(255))


def test_structured_target_and_user_references(pipe, xray):
    refs = [render(50 + i, [], 0, 64).image for i in range(3)]
    out = pipe(xray, [{"label": "Edema", "severity": "moderate"}], seed=0, steps=3, references=refs, seed_opt=FAST)
    assert out.condition == "moderate edema"


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((64, 64, 3), np.uint8), "colour"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8), np.uint8), "between 32 and 8192"),
        (np.zeros((2, 64, 64), np.uint8), "2-D grey"),
    ],
)
def test_bad_images_are_clear_errors(pipe, image, message):
    with pytest.raises(ImageInputError, match=message):
        pipe(image, "mild edema", optimize_seed=False, steps=2)


def test_bad_target_and_arguments(pipe, xray):
    with pytest.raises(NoFindingRecognised, match="understood findings"):
        pipe(xray, "make it interesting", optimize_seed=False)
    with pytest.raises(ValueError, match="steps"):
        pipe(xray, "mild edema", steps=0)


def test_wrong_or_incomplete_checkpoints(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        CounterfactualPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        CounterfactualPipeline.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "vae" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vae.*model.safetensors is missing"):
        CounterfactualPipeline.from_pretrained(broken)
    swapped = tmp_path / "swapped"
    shutil.copytree(checkpoint, swapped)
    shutil.rmtree(swapped / "vae")
    shutil.copytree(checkpoint / "transformer", swapped / "vae")
    with pytest.raises(CheckpointError, match="holds a 'CausalTransformer', expected DisentangledVAE"):
        CounterfactualPipeline.from_pretrained(swapped)
    cfg = json.loads((checkpoint / "vae" / "config.json").read_text())
    cfg["config"]["colour"] = True
    odd = tmp_path / "odd"
    shutil.copytree(checkpoint, odd)
    (odd / "vae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown VAEConfig key"):
        CounterfactualPipeline.from_pretrained(odd)
    # The pipeline config spells out every sampling and seed-optimisation setting; schema 1 is refused.
    for change, message in (
        (lambda c: c["sampling"].pop("detail"), "sampling: SamplingConfig lacks key.*detail"),
        (lambda c: c["seed_optimization"].update(judge="head"), "seed_optimization: unknown SeedOptConfig key.*judge"),
        (lambda c: c.update(schema_version=1), "schema version 1, this library reads 2; .*retrain"),
    ):
        old = tmp_path / f"old{len(message)}"
        shutil.copytree(checkpoint, old)
        cfg = json.loads((old / "config.json").read_text())
        change(cfg)
        (old / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=message):
            CounterfactualPipeline.from_pretrained(old)


def test_dicom_monochrome1_and_16_bit_png(tmp_path):
    import importlib.util
    from pathlib import Path

    from PIL import Image

    root = Path(next(iter(importlib.util.find_spec("data_store").submodule_search_locations))) / "data"
    unc = load_image_file(root / "RG1_UNCR.dcm")
    j2k = load_image_file(root / "RG1_J2KR.dcm")
    assert unc.pixels.shape == (1955, 1841) and "inverted MONOCHROME1" in unc.notes
    assert np.allclose(unc.pixels, j2k.pixels, atol=1e-6)  # lossless JPEG 2000 decodes to the same pixels
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    got = load_image_file(tmp_path / "x16.png")
    assert got.pixels.max() == pytest.approx(1.0) and got.source_format == "png"


def test_cli_generate_and_init(checkpoint, tmp_path, capsys):
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(render(9, [], 0, 128).image).save(src)
    out, rep = tmp_path / "cf.png", tmp_path / "r.json"
    args = ["generate", "--image", str(src), "--target", "moderate right pleural effusion", "--out", str(out)]
    assert main(args + ["--checkpoint", str(checkpoint), "--report", str(rep), "--steps", "3"]) == 0
    img = Image.open(out)
    assert img.size == (128, 128) and "SYNTHETIC" in img.info["Comment"]  # the input's size
    report = json.loads(rep.read_text())
    assert report["condition"] == "moderate right pleural effusion" and report["lp_history"]
    with pytest.raises(SystemExit):
        main(args + ["--checkpoint", str(tmp_path / "missing")])
    assert "not a directory" in capsys.readouterr().err
    assert main(["checkpoint", "init", "--preset", "tiny", "--out", str(tmp_path / "init")]) == 0
    assert CounterfactualPipeline.from_pretrained(tmp_path / "init").centroids.keys() >= {"No Finding", "Fracture"}


def test_seed_optimisation_of_several_requests_equals_each_alone():
    # Two requests in one batch (two seeds and one seed), each with its own centroid and early
    # stop: each gets what it gets alone. The toy render is per row, as the pipeline's is.
    from model.seed_optimization import optimize_seeds

    weights = torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 2.0]])

    def encode(images):
        return images.flatten(1) * weights[0] + images.flatten(1).pow(2) * weights[1]

    centroids = torch.tensor([[0.5, -0.2, 0.1, 0.0], [2.0, 2.0, -1.0, 0.5]])
    z_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    cfg = tiny_opt(max_iters=12, patience=2, optimizer="adam", lr=0.05)
    both = optimize_seeds(z_T, [0, 0, 1], lambda z, m, s, rows: z, centroids, encode, cfg)
    alone = [
        optimize_seed(z_T[:2], lambda z, m, s: z, centroids[:1], encode, cfg),
        optimize_seed(z_T[2:], lambda z, m, s: z, centroids[1:], encode, cfg),
    ]
    for got, want in zip(both, alone):
        assert got.iterations == want.iterations and got.history == pytest.approx(want.history, rel=1e-6)
        assert torch.allclose(got.seed, want.seed, atol=1e-6)
    assert both[0].iterations != both[1].iterations or both[0].history != both[1].history
