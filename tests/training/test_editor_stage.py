"""`whatif train editor` on the tiny preset: its pairs and its stage."""

import numpy as np
import pytest
import torch

from model.editor import request_size
from model.labels import CHEXPERT_LABELS
from model.pipeline import CounterfactualPipeline
from model.presets import get_preset
from training import editor_stage
from training.datasets.edit_pairs import EditPairDataset
from training.options import Hyper
from training.train import editor_data, train


def test_pairs_are_exact_and_the_request_matches_the_kind():
    data = EditPairDataset(40, 64, seed=5)
    kinds = set()
    for i in range(40):
        kind, finding, others, _, _ = data.pair(i)
        item = data[i]
        kinds.add(kind)
        change = (item["truth"] - item["x"]).abs()
        sign = float(item["request"][CHEXPERT_LABELS.index(finding.label)])
        if kind == "null":
            assert change.max() == 0 and sign == 1
        else:
            assert change.max() > 0 and sign == (1 if kind == "add" else -1)
            # outside the finding's own pixels the pair is identical (same patient, same acquisition)
            assert change[item["mask"] == 0].max() == 0
        assert finding.label not in {o.label for o in others}
        # the diffusion is conditioned on the request's canonical text: the finding, or a normal image
        assert (finding.label.lower() in data.text(i)) == (kind != "remove")
        assert item["prior"].sum() > 0
    assert kinds == {"add", "remove", "null"}
    again = EditPairDataset(40, 64, seed=5)[7]
    assert all(torch.equal(again[k], data[7][k]) for k in again)


@pytest.mark.slow
def test_stage_lowers_its_loss_and_the_pipeline_uses_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train("editor", "tiny", "phantom:24", out, steps=30, batch_size=4, hp=Hyper(lr=3e-4))
    rows = (out / "metrics" / "editor.jsonl").read_text().splitlines()
    first, last = (
        np.mean([float(r.split('"editor": ')[1].split(",")[0]) for r in part]) for part in (rows[:5], rows[-5:])
    )
    assert last < first
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    assert pipe.editor.head.weight.abs().sum() > 0  # trained: no longer the zero head
    assert "editor" in pipe.config["training"]["stages"]
    # The generator's part of the pool is cached chunk by chunk: made again, it is only read back.
    monkeypatch.setattr(editor_stage, "editor_inputs", lambda *a: pytest.fail("the cached pool was made again"))
    pool = editor_stage.make_pool(
        pipe, editor_data("phantom:24", get_preset("tiny").resolution), out / "state" / "editor_pairs"
    )
    assert len(pool["x"]) == 24 and pool["request"].shape == (24, request_size())
