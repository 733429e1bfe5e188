"""Fine-detail restoration (model/detail.py): the gate, its limits, and the pipeline's setting."""

import json
import shutil

import numpy as np
import pytest
import torch

from model.detail import restore_detail
from model.pipeline import CounterfactualPipeline
from training.phantom.renderer import render


def test_detail_comes_back_where_nothing_changed_and_not_where_the_finding_is():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=g) * 1.6 - 0.8
    recon = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # the blur an autoencoder leaves
    x_cf = recon.clone()
    x_cf[..., 8:, :] += 0.9  # the finding: a large change in the lower half
    out = restore_detail(x_cf, x, recon, tau=0.2)
    # unchanged half: the input itself, detail and all
    assert torch.allclose(out[..., :8, :], x[..., :8, :], atol=1e-6)
    # changed half: the counterfactual, with the old detail faded to exp(-0.9 / 0.2) ~ 1%
    assert (out[..., 8:, :] - x_cf[..., 8:, :].clamp(-1, 1)).abs().max() < 0.02
    assert torch.equal(restore_detail(x_cf, x, recon, tau=0.0), x_cf)  # 0: the paper's image
    assert out.min() >= -1 and out.max() <= 1
    for bad in (-0.1, 2.5):
        with pytest.raises(ValueError, match="detail must be between 0 and 2"):
            restore_detail(x_cf, x, recon, tau=bad)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    CounterfactualPipeline.from_preset("tiny", seed=0).save_pretrained(path)
    return path


def test_pipeline_detail_setting(checkpoint, tmp_path):
    pipe = CounterfactualPipeline.from_pretrained(checkpoint)
    xray = render(3, [], 0, 64).image
    assert pipe.sampling.detail == 0.0  # the tiny preset keeps the paper's image
    kw = dict(seed=1, steps=3, optimize_seed=False)
    plain = pipe(xray, "moderate cardiomegaly", **kw)
    restored = pipe(xray, "moderate cardiomegaly", detail=0.3, **kw)
    inp = plain.model_input
    # restoring the input's detail brings the generator's decoding closer to the input it came from
    assert np.abs(restored.model_image - inp).mean() < np.abs(plain.model_image - inp).mean() - 0.01
    with pytest.raises(ValueError, match="detail must be between 0 and 2"):
        pipe(xray, "moderate cardiomegaly", detail=5.0, **kw)
    # a checkpoint that sets detail uses it by default
    shutil.copytree(checkpoint, tmp_path / "set")
    cfg = json.loads((tmp_path / "set" / "config.json").read_text())
    cfg["sampling"]["detail"] = 0.3
    (tmp_path / "set" / "config.json").write_text(json.dumps(cfg))
    assert np.array_equal(
        CounterfactualPipeline.from_pretrained(tmp_path / "set")(xray, "moderate cardiomegaly", **kw).model_image,
        restored.model_image,
    )
