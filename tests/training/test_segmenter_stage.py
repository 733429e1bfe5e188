"""`whatif train segmenter` on the tiny preset: its data, its augmentation, its stage, and adding a
segmenter to a checkpoint made before it existed."""

import json
import shutil

import numpy as np
import pytest
import torch

from model.pipeline import CounterfactualPipeline
from training.augment import PositioningAugment
from training.datasets.anatomy import AnatomyDataset
from training.loop import TrainingError
from training.options import Hyper
from training.phantom.cases import sample_case
from training.train import check_request, train


def test_items_are_the_run_cases_with_their_masks_in_anatomy_order():
    plain = AnatomyDataset(8, 64, seed=3, acquisition=False)
    item = plain[2]
    drawn = sample_case(3, 2).render(64)
    assert item["image"].shape == (1, 64, 64) and item["anatomy"].shape == (3, 64, 64)
    assert torch.equal(item["image"], torch.from_numpy(drawn.image.astype(np.float32) / 127.5 - 1)[None])
    for k, name in enumerate(("right_lung", "left_lung", "heart")):
        assert torch.equal(item["anatomy"][k] > 0.5, torch.from_numpy(drawn.anatomy[name]))
    # The patient's right lung is on the viewer's left.
    cols = torch.arange(64, dtype=torch.float32)
    centre = [float((item["anatomy"][k].sum(0) * cols).sum() / item["anatomy"][k].sum()) for k in range(2)]
    assert centre[0] < 32 < centre[1]
    # With acquisition, some cases come from larger renders (soft mask borders) or through a JPEG,
    # the same every time an item is read.
    acquired = AnatomyDataset(16, 64, seed=3)
    items = [acquired[i] for i in range(16)]
    assert any(((it["anatomy"] > 0) & (it["anatomy"] < 1)).any() for it in items)
    assert any(not torch.equal(it["image"], AnatomyDataset(16, 64, 3, False)[i]["image"]) for i, it in enumerate(items))
    assert torch.equal(acquired[5]["image"], items[5]["image"])


def test_positioning_moves_the_masks_with_the_image():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand((4, 3, 32, 32), generator=g) > 0.5).float()
    image = masks[:, :1] * 2 - 1  # the image is the first mask: they must stay equal
    x, moved = PositioningAugment(p=1.0, max_gain=1.0)(image, masks, torch.Generator().manual_seed(1))
    assert not torch.equal(moved, masks)  # it moved them
    assert torch.allclose((x + 1) / 2, moved[:, :1], atol=1e-6)
    assert moved.min() >= 0 and moved.max() <= 1
    # p = 0 leaves them alone; the same generator state gives the same result.
    assert PositioningAugment(p=0.0)(image, masks, g)[1] is masks
    again = PositioningAugment(p=1.0, max_gain=1.0)(image, masks, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], x)


@pytest.mark.slow
def test_stage_lowers_its_loss_writes_the_weights_and_resumes(tmp_path):
    out = tmp_path / "run"
    before = CounterfactualPipeline.from_preset("tiny").segmenter.state_dict()
    # Without augmentation the loss falls within a few steps on the tiny preset.
    hp = Hyper(lr=3e-4, acquisition_augment=0.0)
    train("segmenter", "tiny", "phantom:32", out, steps=30, batch_size=8, hp=hp)
    rows = [json.loads(line) for line in (out / "metrics" / "segmenter.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    first = np.mean([r["bce"] + r["dice_loss"] for r in rows[:5]])
    last = np.mean([r["bce"] + r["dice_loss"] for r in rows[-5:]])
    assert last < first - 0.1, (first, last)
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    after = pipe.segmenter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    history = pipe.config["training"]["stages"]["segmenter"]
    assert history["runs"] == [{"to_step": 30, "batch_size": 8, "lr": 3e-4, "acquisition_augment": 0.0, "sitting": 1}]
    assert set(history["final"]) == {"bce", "dice_loss"}
    assert pipe.centroids == {}  # it trains nothing the references read: they are not made again
    train("segmenter", "tiny", "phantom:32", out, steps=33, batch_size=8, resume=True, hp=hp)
    rows = [json.loads(line)["step"] for line in (out / "metrics" / "segmenter.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 34))
    runs = CounterfactualPipeline.from_pretrained(out / "checkpoint").config["training"]["stages"]["segmenter"]["runs"]
    assert [r["to_step"] for r in runs] == [30, 33]


@pytest.mark.slow
def test_a_checkpoint_without_a_segmenter_gets_one_to_train(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, out / "checkpoint")
    shutil.rmtree(out / "checkpoint" / "segmenter")
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    del config["components"]["segmenter"]
    (out / "checkpoint" / "config.json").write_text(json.dumps(config))
    vae = CounterfactualPipeline.from_pretrained(tiny_checkpoint).vae.state_dict()
    train("segmenter", "tiny", "phantom:16", out, steps=2, batch_size=4)
    assert "had no segmenter; added one freshly initialised from preset 'tiny'" in capsys.readouterr().out
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    assert pipe.config["components"]["segmenter"] == "segmenter"
    assert all(torch.equal(v, pipe.vae.state_dict()[k]) for k, v in vae.items())  # the rest is kept
    assert list(pipe.config["training"]["stages"]) == ["segmenter"]


def test_bad_segmenter_runs_fail_before_training(tmp_path, tiny_checkpoint):
    with pytest.raises(TrainingError, match="exact masks"):
        train("segmenter", "tiny", str(tmp_path), tmp_path / "a", steps=2, batch_size=4)
    with pytest.raises(TrainingError, match="--kl-weight applies to stage1 only, not segmenter"):
        train("segmenter", "tiny", "phantom:8", tmp_path / "b", steps=2, batch_size=4, hp=Hyper(kl_weight=0.01))
    # A checkpoint put into the run by hand must be of the preset asked for.
    shutil.copytree(tiny_checkpoint, tmp_path / "c" / "checkpoint")
    with pytest.raises(TrainingError, match="was made with preset 'tiny'"):
        train("segmenter", "phantom-128", "phantom:8", tmp_path / "c", steps=2, batch_size=4)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # "all" is the generator and its judge; the segmenter has sittings of its own.
    assert "segmenter" not in check_request("all", 2, 4, Hyper())
    assert check_request("segmenter", 2, 4, Hyper()) == ("segmenter",)
