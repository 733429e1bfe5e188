"""A pretrained open_clip model from a local directory (e.g. BiomedCLIP exported by the user) as E_CXR
and text encoder: the export format is built here as a tiny fixture; nothing is downloaded."""

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from model.contrastive import ContrastiveConfig, ContrastiveModel


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("biomedclip-like")
    cfg = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


def test_local_open_clip_backbone_encodes_and_round_trips(export_dir, tmp_path):
    m = ContrastiveModel(ContrastiveConfig(backbone=f"open_clip:local-dir:{export_dir}")).eval()
    x = torch.rand(2, 1, 100, 100) * 2 - 1
    with torch.no_grad():
        feats, tokens = m.encode_image(x), m.text_tokens(["small left pleural effusion", "no finding"])
    assert feats.shape == (2, 32) and tokens.shape == (2, 16, 32) and m.config.image_size == 64
    assert torch.allclose(m.image_mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    m.save_pretrained(tmp_path / "c")
    again = ContrastiveModel.from_pretrained(tmp_path / "c")
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), feats)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["config"]["backbone"].startswith(
        "open_clip:local-dir:"
    )


def test_pretrained_backbone_is_never_downloaded(tmp_path):
    with pytest.raises(ValueError, match="read from disk only"):
        ContrastiveModel(ContrastiveConfig(backbone="open_clip:hf-hub:microsoft/BiomedCLIP"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ContrastiveModel(ContrastiveConfig(backbone=f"open_clip:local-dir:{tmp_path}"))
    with pytest.raises(ValueError, match="unknown contrastive backbone"):
        ContrastiveModel(ContrastiveConfig(backbone="resnet"))


def test_vgg16_identity_encoder_from_local_safetensors(tmp_path):
    from torchvision.models import vgg16

    from model.identity_encoder import IdentityEncoder, IdentityEncoderConfig

    torch.manual_seed(0)
    features = vgg16(weights=None).features  # the convolutional part: what E_ID uses (59 MB)
    path = tmp_path / "vgg16.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    enc = IdentityEncoder(IdentityEncoderConfig(backbone=f"vgg16:{path}")).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        e = enc(x)
    assert e.shape == (2, 512) and torch.allclose(e.norm(dim=-1), torch.ones(2))
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(FileNotFoundError, match="VGG-16 weights"):
        IdentityEncoder(IdentityEncoderConfig(backbone=f"vgg16:{tmp_path / 'missing.safetensors'}"))
