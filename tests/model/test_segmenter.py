"""The anatomy segmenter with the tiny preset: shapes, masks, resizing, round trip, bad configs."""

import json

import pytest
import torch

from model.modeling import SCHEMA_VERSION, CheckpointError
from model.presets import available_presets, get_preset
from model.segmenter import ANATOMY, AnatomySegmenter, SegmenterConfig

TINY = get_preset("tiny").components["segmenter"]


def _segmenter() -> AnatomySegmenter:
    torch.manual_seed(0)
    return AnatomySegmenter(TINY).eval()


def test_logits_and_masks_have_one_channel_per_structure():
    seg = _segmenter()
    x = torch.rand((2, 1, 64, 64), generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        logits = seg(x)
    assert ANATOMY == ("right_lung", "left_lung", "heart")
    assert logits.shape == (2, 3, 64, 64) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    masks = seg.masks(x)
    assert masks.dtype == torch.bool and masks.shape == (2, 3, 64, 64)
    assert torch.equal(masks, torch.sigmoid(logits) >= 0.5)
    assert not masks.requires_grad


def test_another_side_is_resized_to_the_trained_one_and_back():
    seg = _segmenter()
    x = torch.rand((1, 1, 128, 128), generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        logits = seg(x)
        at_64 = seg(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True))
    assert logits.shape == (1, 3, 128, 128)
    # The network itself ran at 64: its logits there, upsampled, are what came back.
    back = torch.nn.functional.interpolate(at_64, size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, back, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    seg = _segmenter()
    seg.save_pretrained(tmp_path / "segmenter")
    meta = json.loads((tmp_path / "segmenter" / "config.json").read_text())
    assert meta["class"] == "AnatomySegmenter" and meta["schema_version"] == SCHEMA_VERSION
    assert meta["config"] == {"base_channels": 4, "depth": 3, "norm_groups": 2, "image_size": 64}
    again = AnatomySegmenter.from_pretrained(tmp_path / "segmenter")
    x = torch.rand((2, 1, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(x), seg(x))
    # Another network's directory is refused.
    meta["class"] = "EvalClassifier"
    (tmp_path / "segmenter" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected AnatomySegmenter"):
        AnatomySegmenter.from_pretrained(tmp_path / "segmenter")


def test_every_preset_has_one_and_bad_configs_are_refused():
    for name in available_presets():
        config = get_preset(name).components["segmenter"]
        assert isinstance(config, SegmenterConfig) and config.image_size == get_preset(name).resolution
    with pytest.raises(ValueError, match="image_size divisible by 8"):
        AnatomySegmenter(SegmenterConfig(depth=4, image_size=100))
    with pytest.raises(ValueError, match="must divide by norm_groups"):
        AnatomySegmenter(SegmenterConfig(base_channels=6, norm_groups=4))
    with pytest.raises(CheckpointError, match="unknown SegmenterConfig key"):
        SegmenterConfig.from_dict({"channels": 8})
