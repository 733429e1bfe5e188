"""`CounterfactualPipeline.batch`: several requests in one batch each get what they would alone,
with their own seeds, candidates, progress and result; a request with a bad input fails alone.

In float64, so that "what it would alone" is exact up to the rounding of a larger batch (1e-9),
well below any decision the pipeline takes (the best seed, the guard, the verdict)."""

import numpy as np
import pytest
import torch

from model.pipeline import CounterfactualPipeline, Request
from model.preprocess import ImageInputError
from training.phantom.renderer import render


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return CounterfactualPipeline.from_pretrained(tiny_checkpoint).to(dtype=torch.float64)


def _image(identity: int) -> np.ndarray:
    return render(identity, [], 3, 64).image


def _requests(progress: dict) -> list[Request]:
    def tracker(name):
        return lambda stage, step, total, lp: progress.setdefault(name, []).append((stage, step))

    return [
        Request(_image(1), "moderate left pleural effusion", seed=3, progress=tracker("a")),
        Request(
            _image(2), "small right pneumothorax", seed=5, optimize_seed=False, candidates=2, progress=tracker("b")
        ),
        Request(np.full((64, 64), np.nan), "pneumonia", seed=1),  # not an image: fails alone
        Request(_image(3), "mild cardiomegaly", seed=8, region=np.ones((64, 64)), progress=tracker("d")),
    ]


@pytest.mark.slow
def test_a_batch_gives_each_request_what_it_gets_alone(pipe, monkeypatch):
    together_progress, alone_progress = {}, {}
    calls = []
    sample = pipe.diffusion.sample

    def counted(seeds, *args, **kwargs):
        calls.append(len(seeds))
        return sample(seeds, *args, **kwargs)

    monkeypatch.setattr(pipe.diffusion, "sample", counted)
    together = pipe.batch(_requests(together_progress))
    assert len(calls) == 1 and calls[0] >= 4  # the three live requests' seeds, one DDIM run
    monkeypatch.undo()
    alone = []
    for r in _requests(alone_progress):
        try:
            alone.append(
                pipe(
                    r.image,
                    r.target,
                    seed=r.seed,
                    optimize_seed=r.optimize_seed,
                    region=r.region,
                    candidates=r.candidates,
                    progress=r.progress,
                )
            )
        except ImageInputError as exc:
            alone.append(exc)
    assert isinstance(together[2], ImageInputError) and isinstance(alone[2], ImageInputError)
    for t, a in (together[0], alone[0]), (together[1], alone[1]), (together[3], alone[3]):
        np.testing.assert_allclose(t.image, a.image, atol=1e-9)
        np.testing.assert_array_equal(t.region, a.region)
        np.testing.assert_allclose(t.lp_history, a.lp_history, rtol=1e-9)
        assert (t.seed, t.chosen, t.seed_kept, t.condition) == (a.seed, a.chosen, a.seed_kept, a.condition)
        assert [c["verdict"]["status"] for c in t.candidates] == [c["verdict"]["status"] for c in a.candidates]
    assert len(together[1].candidates) == 2 and together[0].seed_optimized and not together[1].seed_optimized
    assert together[3].region_source == "user"
    for name in ("a", "b", "d"):  # each request hears of its own stages
        stages = {stage for stage, _ in together_progress[name]}
        assert stages == {stage for stage, _ in alone_progress[name]} and "sampling" in stages


def test_the_batch_settings_are_checked_before_any_request(pipe):
    with pytest.raises(ValueError, match="steps"):
        pipe.batch([Request(_image(1), "pneumonia")], steps=0)
