"""The downstream comparison (`whatif eval --downstream`) at tiny sizes: its arms, its resumable
state, its report; and the repeat factors of the oversampled arm."""

from __future__ import annotations

import json

import pytest
import torch

from training.longtail import downstream
from training.longtail.downstream import TAIL, DownstreamConfig, repeat_factors, run_downstream
from training.longtail.downstream_report import BEGIN, END, write_report


def test_repeat_factors_follow_lvis():
    y = torch.zeros(100, 3)
    y[:50, 0] = 1  # frequent (0.5): no repeat
    y[:1, 1] = 1  # rare (0.01): sqrt(0.1 / 0.01)
    r = repeat_factors(y, threshold=0.1)
    assert r[0] == pytest.approx(10**0.5) and r[1] == 1.0 and r[99] == 1.0


@pytest.mark.slow
def test_a_quick_comparison_runs_resumes_and_reports(tmp_path, tiny_checkpoint, monkeypatch):
    cfg = DownstreamConfig.quick()
    results = run_downstream(tmp_path / "work", tiny_checkpoint, cfg)
    assert set(results["arms"]) == {"a", "b", "c", "c_all"}
    for arm in results["arms"].values():
        assert len(arm["tail"]["runs"]) == len(cfg.seeds) and 0.0 <= arm["tail"]["mean"] <= 1.0
        assert set(arm["per_finding"]) >= set(TAIL)
    made = results["counts"]["counterfactuals_all"]
    assert sum(made[label] for label in TAIL) == cfg.head_images * len(TAIL)  # each head image, each tail finding
    assert results["checkpoint"].startswith(tiny_checkpoint)
    if not sum(results["counts"]["counterfactuals_passed"].values()):  # (c) trains on (a)'s data: (a)'s scores
        assert results["arms"]["c"]["per_finding"] == results["arms"]["a"]["per_finding"]

    def no_training(*a, **k):
        raise AssertionError("a finished classifier was trained again")

    monkeypatch.setattr(downstream, "train_classifier", no_training)
    again = run_downstream(tmp_path / "work", tiny_checkpoint, cfg)  # everything is in the work directory
    assert again["arms"] == json.loads(json.dumps(results["arms"]))

    page = tmp_path / "augmentation.md"  # the hand-written guide around the generated block stays
    page.write_text(f"# Guide\n\nby hand\n\n{BEGIN}\nstale table\n{END}\n\n## After\n")
    out = write_report(results, page, "whatif eval --downstream --quick")
    text = out.read_text()
    assert text.startswith("# Guide\n\nby hand\n\n" + BEGIN) and text.endswith(END + "\n\n## After\n")
    assert "stale table" not in text and text.count(BEGIN) == 1
    assert "| (c) + counterfactuals, verdict passed |" in text and "tail AUROC of (c) at least 0.05 above (b)" in text
    assert "not clinical use" in text and (tmp_path / "augmentation.png").stat().st_size > 10_000
