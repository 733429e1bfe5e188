"""Networks of the model library with the tiny preset: shapes, round trips, errors."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model.editor import request_size
from model.modeling import SCHEMA_VERSION, CheckpointError
from model.pipeline import COMPONENTS, CounterfactualPipeline
from model.presets import available_presets, get_preset, preset_from_dict
from model.sampling import SamplingConfig
from model.seed_optimization import SeedOptConfig

TINY = get_preset("tiny")


def _inputs(name, gen):
    c = TINY.components
    if name in ("vae", "identity_encoder", "eval_classifier", "contrastive", "segmenter"):
        return torch.rand((2, 1, TINY.resolution, TINY.resolution), generator=gen) * 2 - 1
    if name == "transformer":
        return torch.randn((2, 4, c["transformer"].latent_size, c["transformer"].latent_size), generator=gen)
    if name == "findings_head":
        return torch.randn((2, 1, 16, 16), generator=gen)
    if name == "editor":  # x, raw, recon, prior, request
        side = TINY.resolution
        images = [torch.rand((2, 1, side, side), generator=gen) * 2 - 1 for _ in range(3)]
        return (*images, torch.ones((2, 1, side, side)), torch.randn((2, request_size()), generator=gen))
    raise AssertionError(name)


def _run(name, module, x):
    if name == "contrastive":
        return torch.cat([module.encode_image(x), module.encode_text(["mild cardiomegaly", "no finding"])], -1)
    if name == "diffusion":
        g = torch.Generator().manual_seed(3)
        z = torch.randn((1, 1, 16, 16), generator=g)
        cond = torch.randn((1, 24, 32), generator=g)
        return module.sample(z, cond, torch.zeros_like(cond), steps=3, guidance=2.0)
    if name == "vae":
        return module(x)
    if name == "editor":
        return module(*x)
    return module(x)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_shapes_and_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    module = COMPONENTS[name](TINY.components[name]).eval()
    gen = torch.Generator().manual_seed(1)
    x = None if name == "diffusion" else _inputs(name, gen)
    with torch.no_grad():
        y = _run(name, module, x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    expected = {
        "vae": (2, 1, 64, 64),
        "transformer": (2, 4, 16, 16),
        "findings_head": (2, 14),
        "diffusion": (1, 1, 16, 16),
        "contrastive": (2, 64),
        "identity_encoder": (2, 16),
        "eval_classifier": (2, 14),
        "segmenter": (2, 3, 64, 64),
        "editor": (2, 1, 64, 64),
    }[name]
    assert tuple(y.shape) == expected
    module.save_pretrained(tmp_path / name)
    meta = json.loads((tmp_path / name / "config.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["class"] == type(module).__name__
    again = type(module).from_pretrained(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(_run(name, again, x), y)


def test_text_pooling_reads_the_whole_condition():
    """The pooled text feature is read at the end token, which sees every word: two conditions
    that differ only in their last word differ. open_clip's "argmax" pooling reads the
    alphabetically last word here ("moderate"), which a causal text tower lets see only the words
    before it: the same feature for both."""
    torch.manual_seed(0)
    module = COMPONENTS["contrastive"](
        dataclasses.replace(TINY.components["contrastive"], text_attention="causal")
    ).eval()
    assert module.config.text_pool == "eos"
    texts = ["moderate atelectasis", "moderate cardiomegaly"]
    with torch.no_grad():
        eos = module.encode_text(texts)
        assert not torch.allclose(eos[0], eos[1], atol=1e-4)
        module.clip.text_pool_type = "argmax"
        assert torch.allclose(*module.encode_text(texts), atol=1e-6)
    # Bidirectional (the default): the argmax word sees the finding after it too.
    both = COMPONENTS["contrastive"](TINY.components["contrastive"]).eval()
    assert both.config.text_attention == "bidirectional"
    both.clip.text_pool_type = "argmax"
    with torch.no_grad():
        assert not torch.allclose(*both.encode_text(texts), atol=1e-4)
    with pytest.raises(ValueError, match="text_pool"):
        type(module)(dataclasses.replace(module.config, text_pool="mean"))


def test_bidirectional_text_tower_lets_the_zone_see_the_finding(tmp_path):
    """Stage 2 cross-attends to every token's feature. Under the causal mask, the tokens before
    the finding's name ("moderate right lower") are the same whatever the finding; bidirectional,
    they differ."""
    torch.manual_seed(0)
    texts = ["moderate right lower lung lesion", "moderate right lower consolidation"]
    config = TINY.components["contrastive"]
    causal = COMPONENTS["contrastive"](dataclasses.replace(config, text_attention="causal")).eval()
    both = COMPONENTS["contrastive"](dataclasses.replace(config, text_attention="bidirectional")).eval()
    both.load_state_dict(causal.state_dict())  # same weights: only the mask differs
    with torch.no_grad():
        c, b = causal.text_tokens(texts), both.text_tokens(texts)
    before = slice(0, 4)  # start token, "moderate", "right", "lower"
    assert torch.equal(c[0, before], c[1, before])
    assert (b[0, before] - b[1, before]).abs().amax() > 1e-3
    both.save_pretrained(tmp_path / "b")
    assert type(both).from_pretrained(tmp_path / "b").config.text_attention == "bidirectional"
    # A saved config spells out every field: one without text_attention is refused, not guessed.
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    meta["config"].pop("text_attention")
    (tmp_path / "b" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="ContrastiveConfig lacks key.*text_attention"):
        type(both).from_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="text_attention"):
        type(both)(dataclasses.replace(config, text_attention="left"))


def test_vae_latent_is_quarter_resolution_and_splits():
    vae = COMPONENTS["vae"](TINY.components["vae"])
    z = vae.encode(torch.zeros(1, 1, 64, 64)).mean
    assert z.shape == (1, 4, 16, 16)
    z_id, z_path = vae.split(z)
    assert z_id.shape[1] == 3 and z_path.shape[1] == 1 and torch.equal(vae.join(z_id, z_path), z)


def test_untrained_transformer_is_identity():
    t = COMPONENTS["transformer"](TINY.components["transformer"])
    z = torch.randn(1, 4, 16, 16)
    assert torch.equal(t(z), z)


def test_explicit_ddim_loop_matches_diffusers_scheduler():
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    d = COMPONENTS["diffusion"](TINY.components["diffusion"]).eval()
    g = torch.Generator().manual_seed(0)
    z_T, cond = torch.randn((1, 1, 16, 16), generator=g), torch.randn((1, 24, 32), generator=g)
    uncond = torch.zeros_like(cond)
    ours = d.sample(z_T, cond, uncond, steps=6, guidance=3.0)
    sched = DDIMScheduler.from_config(
        d.train_scheduler.config, clip_sample=False, set_alpha_to_one=True, steps_offset=1
    )
    sched.set_timesteps(6)
    z = z_T
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(d.eps(z, int(t), cond, uncond, 3.0), t, z).prev_sample
    assert torch.allclose(ours, z, atol=1e-5)


def test_weighted_diffusion_loss_is_eq16_when_uniform_and_weighs_the_marked_pixels():
    torch.manual_seed(0)
    d = COMPONENTS["diffusion"](TINY.components["diffusion"]).eval()
    g = torch.Generator().manual_seed(1)
    z, cond = torch.randn((2, 1, 16, 16), generator=g), torch.randn((2, 24, 32), generator=g)

    def loss(weight=None):
        with torch.no_grad():
            return float(d.training_loss(z, cond, torch.Generator().manual_seed(2), weight=weight))

    plain = loss()
    # A uniform weight, whatever its scale, is Eq. 16's plain mean.
    assert loss(torch.full((2, 1, 16, 16), 3.0)) == pytest.approx(plain, rel=1e-5)
    # Weight only on one corner: the loss is that corner's mean squared error, not the image's.
    corner = torch.zeros((2, 1, 16, 16))
    corner[:, :, :4, :4] = 1.0
    assert loss(corner + 1e-9) != pytest.approx(plain, rel=1e-3)
    assert loss(1.0 + 1e6 * corner) == pytest.approx(loss(corner + 1e-9), rel=1e-3)
    with pytest.raises(ValueError, match="weight must be"):
        loss(torch.ones((2, 1, 8, 8)))


def test_a_schema_1_checkpoint_is_refused_with_the_fix(tmp_path):
    torch.manual_seed(0)
    COMPONENTS["findings_head"](TINY.components["findings_head"]).save_pretrained(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "config.json").read_text())
    meta["schema_version"] = 1
    (tmp_path / "h" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="schema version 1, this library reads 2; retrain it with this release"):
        COMPONENTS["findings_head"].from_pretrained(tmp_path / "h")


def test_presets_registry_and_strict_keys():
    assert {"tiny", "phantom-128", "paper-256"} <= set(available_presets())
    with pytest.raises(CheckpointError, match="unknown preset 'huge'"):
        get_preset("huge")
    data = get_preset("tiny").to_dict()
    data["vae"]["latent_chanels"] = 4
    with pytest.raises(CheckpointError, match="unknown VAEConfig key"):
        preset_from_dict("x", data)
    data = get_preset("tiny").to_dict()
    data["colour"] = True
    with pytest.raises(CheckpointError, match="unknown key"):
        preset_from_dict("x", data)
    data = get_preset("tiny").to_dict()
    data["resolution"] = 128
    with pytest.raises(CheckpointError, match="latent"):
        preset_from_dict("x", data)
    assert get_preset("tiny").sampling.start == "inversion"
    assert get_preset("tiny").sampling.detail == 0.0 and get_preset("phantom-128").sampling.detail == 0.3
    for bad, why in (
        ({"start": "reference"}, "start must be one of"),
        ({"stepz": 4}, "unknown SamplingConfig key"),
        ({"detail": -0.1}, "detail must be"),
        ({"detail": 3.0}, "detail must be"),
        ({"steps": 0}, "steps must be"),
    ):
        data = get_preset("tiny").to_dict()
        data["sampling"].update(bad)
        with pytest.raises(CheckpointError, match=f"preset 'x': sampling: .*{why}"):
            preset_from_dict("x", data)
    data = get_preset("tiny").to_dict()
    data["seed_optimization"] = {"method": "adam"}
    with pytest.raises(CheckpointError, match="seed_optimization: unknown seed optimisation method"):
        preset_from_dict("x", data)
    data["seed_optimization"] = {"lr": 0.01}
    assert CounterfactualPipeline.from_preset(preset_from_dict("x", data)).config["seed_optimization"]["lr"] == 0.01


def test_the_defaults_are_the_recommended_settings_and_presets_spell_out_theirs():
    # One home for defaults: the dataclasses' are phantom-128's, the embedded default's preset.
    p = get_preset("phantom-128")
    assert p.sampling == SamplingConfig() and p.seed_optimization == SeedOptConfig()
    assert SamplingConfig() == SamplingConfig(steps=20, guidance=8.0, start="inversion", detail=0.3)
    assert (SeedOptConfig().optimizer, SeedOptConfig().lr, SeedOptConfig().guard) == ("normalized", 0.005, True)
    # tiny keeps Algorithm 2's optimiser for the tests; the paper preset is Algorithm 2 as written.
    tiny = get_preset("tiny")
    assert (tiny.seed_optimization.optimizer, tiny.seed_optimization.lr, tiny.seed_optimization.guard) == (
        "adam",
        0.1,
        False,
    )
    assert tiny.sampling == SamplingConfig(steps=10, guidance=3.0, start="inversion", detail=0.0)
    paper = get_preset("paper-256")
    assert paper.seed_optimization == SeedOptConfig(optimizer="adam", lr=0.1, norm_weight=0.0, guard=False)
    assert paper.sampling.start == "noise" and paper.sampling.detail == 0.0
    for name in available_presets():
        data = json.loads((Path(__file__).parents[2] / "model" / "presets" / f"{name}.json").read_text())
        assert set(data["sampling"]) == {f.name for f in dataclasses.fields(SamplingConfig)}, name
        assert set(data["seed_optimization"]) == {f.name for f in dataclasses.fields(SeedOptConfig)}, name


def test_paper_preset_matches_the_paper():
    p = get_preset("paper-256")
    assert p.resolution == 256 and p.components["vae"].latent_channels == 4
    assert p.components["transformer"].depth == 4 and p.components["transformer"].latent_size == 64
