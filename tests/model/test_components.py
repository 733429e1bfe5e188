"""Networks of the model library with the tiny preset: shapes, round trips, errors."""

import dataclasses
import json

import pytest
import torch

from model.modeling import CheckpointError
from model.pipeline import COMPONENTS, CounterfactualPipeline
from model.presets import available_presets, get_preset, preset_from_dict

TINY = get_preset("tiny")


def _inputs(name, gen):
    c = TINY.components
    if name in ("vae", "identity_encoder", "eval_classifier", "contrastive"):
        return torch.rand((2, 1, TINY.resolution, TINY.resolution), generator=gen) * 2 - 1
    if name == "transformer":
        return torch.randn((2, 4, c["transformer"].latent_size, c["transformer"].latent_size), generator=gen)
    if name == "findings_head":
        return torch.randn((2, 1, 16, 16), generator=gen)
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
        "vae": (2, 1, 64, 64), "transformer": (2, 4, 16, 16), "findings_head": (2, 14), "diffusion": (1, 1, 16, 16),
        "contrastive": (2, 64), "identity_encoder": (2, 16), "eval_classifier": (2, 14),
    }[name]
    assert tuple(y.shape) == expected
    module.save_pretrained(tmp_path / name)
    meta = json.loads((tmp_path / name / "config.json").read_text())
    assert meta["schema_version"] == 1 and meta["class"] == type(module).__name__
    again = type(module).from_pretrained(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(_run(name, again, x), y)


def test_text_pooling_reads_the_whole_condition(tmp_path):
    """The pooled text feature is read at the end token, which sees every word: two conditions
    that differ only in their last word differ. open_clip's "argmax" pooling read the
    alphabetically last word here ("moderate"), which the causal text tower of the checkpoints
    written before the fix let see only the words before it: the same feature for both."""
    torch.manual_seed(0)
    module = COMPONENTS["contrastive"](dataclasses.replace(TINY.components["contrastive"], text_attention="causal")).eval()
    assert module.config.text_pool == "eos"
    texts = ["moderate atelectasis", "moderate cardiomegaly"]
    with torch.no_grad():
        eos = module.encode_text(texts)
        assert not torch.allclose(eos[0], eos[1], atol=1e-4)
        module.clip.text_pool_type = "argmax"  # what checkpoints before the fix did
        assert torch.allclose(*module.encode_text(texts), atol=1e-6)
    # A checkpoint written before the field existed was trained with argmax and loads as such.
    module.clip.text_pool_type = "eos"
    module.save_pretrained(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["config"].pop("text_pool") == "eos"
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    legacy = type(module).from_pretrained(tmp_path / "c")
    assert legacy.config.text_pool == "argmax" and legacy.clip.text_pool_type == "argmax"
    # New models are bidirectional: the argmax word sees the finding after it too.
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
    they differ. Checkpoints written before the field load causal."""
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
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    meta["config"].pop("text_attention")
    (tmp_path / "b" / "config.json").write_text(json.dumps(meta))
    legacy = type(both).from_pretrained(tmp_path / "b")
    assert legacy.config.text_attention == "causal"
    with torch.no_grad():
        assert torch.equal(legacy.text_tokens(texts)[0, before], legacy.text_tokens(texts)[1, before])
    with pytest.raises(ValueError, match="text_attention"):
        type(both)(dataclasses.replace(config, text_attention="left"))


def test_masked_lm_corrupts_words_only_bert_style_and_ties_its_decoder(monkeypatch):
    """BERT's recipe on the condition texts: a share of the words is chosen, of which 80% become
    the mask (<unk>), 10% another word and 10% stay; special tokens are never touched; the
    prediction reads the token embedding backwards, so the checkpoint gains no weights."""
    from model.tokenizer import FIRST_WORD_ID, VOCAB

    torch.manual_seed(0)
    model = COMPONENTS["contrastive"](TINY.components["contrastive"])
    keys = set(model.state_dict())
    texts = ["moderate right lower lung lesion; mild cardiomegaly"] * 400
    seen = {}
    real = model._token_features

    def spy(tokens):
        seen["corrupted"] = tokens
        return real(tokens)

    monkeypatch.setattr(model, "_token_features", spy)
    loss = model.masked_lm_loss(texts, torch.Generator().manual_seed(0), share=0.5)
    original, corrupted = model.tokenizer(texts), seen["corrupted"]
    words = original >= FIRST_WORD_ID
    assert torch.equal(corrupted[~words], original[~words])  # <sot>, ";", <eot>, padding
    changed = corrupted != original
    masked = (corrupted == model.tokenizer.unk_id).sum().item()
    replaced = (changed & (corrupted != model.tokenizer.unk_id)).sum().item()
    chosen = words.sum().item() * 0.5
    assert 0.75 * chosen < masked < 0.85 * chosen  # 80% of the chosen words
    assert 0.03 * chosen < replaced < 0.1 * chosen  # 10%, less those that drew their own word
    assert (corrupted[changed & (corrupted != model.tokenizer.unk_id)] >= FIRST_WORD_ID).all()
    assert VOCAB[model.tokenizer.unk_id] == "<unk>" and loss.ndim == 0 and torch.isfinite(loss)
    assert model.masked_lm_loss(["", ""], torch.Generator()).item() == 0  # nothing to predict
    # A draw that chooses no word still predicts one (an empty choice would give NaN).
    assert model.masked_lm_loss(["mild edema"], torch.Generator(), share=0.0).item() > 0
    loss.backward()
    assert model.clip.token_embedding.weight.grad.abs().sum() > 0
    assert set(model.state_dict()) == keys
    # It learns: a few steps on one text lower the loss on fresh masks of it.
    opt = torch.optim.Adam(model.text_parameters(), lr=3e-3)
    first = model.masked_lm_loss(texts[:32], torch.Generator().manual_seed(1)).item()
    for i in range(30):
        opt.zero_grad()
        model.masked_lm_loss(texts[:32], torch.Generator().manual_seed(2 + i)).backward()
        opt.step()
    assert model.masked_lm_loss(texts[:32], torch.Generator().manual_seed(1)).item() < 0.5 * first


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
    sched = DDIMScheduler.from_config(d.train_scheduler.config, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
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


def test_label_token_is_one_more_context_token_and_leaves_the_preset_initialisation_alone(tmp_path):
    cfg = TINY.components["diffusion"]
    torch.manual_seed(0)
    plain = COMPONENTS["diffusion"](cfg).eval()
    after_plain = torch.rand(3)
    torch.manual_seed(0)
    labelled = COMPONENTS["diffusion"](dataclasses.replace(cfg, num_labels=14)).eval()
    # The label embeddings do not draw from the global generator: the UNet and whatever a preset
    # builds next get the weights they get without them.
    assert torch.equal(torch.rand(3), after_plain)
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.state_dict().values(), labelled.unet.state_dict().values()))
    assert set(labelled.state_dict()) - set(plain.state_dict()) == {"label_embedding"}
    tokens = torch.randn((2, 24, 32), generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 14)
    labels[0, 4] = 1.0
    labels[1, [2, 6]] = 1.0
    assert plain.context(tokens, labels) is tokens  # the paper's context: labels are not read
    ctx = labelled.context(tokens, labels)
    assert ctx.shape == (2, 25, 32) and torch.equal(ctx[:, :24], tokens)
    e = labelled.label_embedding.detach()
    assert torch.allclose(ctx[0, 24], e[4]) and torch.allclose(ctx[1, 24], e[2] + e[6])
    assert 0.5 < float(e.std()) < 2.0  # the scale of the text tower's layer-normed tokens
    assert torch.equal(labelled.context(tokens)[:, 24], torch.zeros(2, 32))  # unconditional: no labels
    # L_G's gradient reaches the embeddings of the labels present, and only theirs.
    z = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(2))
    labelled.training_loss(z, labelled.context(tokens, labels), torch.Generator().manual_seed(3)).backward()
    moved = labelled.label_embedding.grad.abs().sum(1) > 0
    assert moved.nonzero().flatten().tolist() == [2, 4, 6]
    with pytest.raises(ValueError, match=r"labels must be \(2, 14\)"):
        labelled.context(tokens, torch.zeros(2, 13))
    with pytest.raises(ValueError, match="num_labels must be 0 or more"):
        COMPONENTS["diffusion"](dataclasses.replace(cfg, num_labels=-1))
    labelled.save_pretrained(tmp_path / "d")
    again = type(labelled).from_pretrained(tmp_path / "d")
    assert again.config.num_labels == 14 and torch.equal(again.label_embedding, labelled.label_embedding)
    data = TINY.to_dict()
    data["diffusion"]["num_labels"] = 5
    with pytest.raises(CheckpointError, match="num_labels is 0 .* or 14"):
        preset_from_dict("x", data)


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
    assert get_preset("tiny").sampling["start"] == "inversion"
    assert get_preset("tiny").sampling["detail"] == 0.0 and get_preset("phantom-128").sampling["detail"] == 0.3
    for bad in ({"start": "reference"}, {"stepz": 4}, {"detail": -0.1}, {"detail": 3.0}):
        data = get_preset("tiny").to_dict()
        data["sampling"].update(bad)
        with pytest.raises(CheckpointError, match="sampling takes steps, guidance, start"):
            preset_from_dict("x", data)
    data = get_preset("tiny").to_dict()
    data["seed_optimization"] = {"method": "adam"}
    with pytest.raises(CheckpointError, match="seed_optimization: unknown seed optimisation method"):
        preset_from_dict("x", data)
    data["seed_optimization"] = {"lr": 0.01}
    assert CounterfactualPipeline.from_preset(preset_from_dict("x", data)).config["seed_optimization"]["lr"] == 0.01


def test_paper_preset_matches_the_paper():
    p = get_preset("paper-256")
    assert p.resolution == 256 and p.components["vae"].latent_channels == 4
    assert p.components["transformer"].depth == 4 and p.components["transformer"].latent_size == 64
