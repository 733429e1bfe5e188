"""`whatif diagnose`: every diagnostic runs on a tiny checkpoint and docs/diagnostics.md lists each."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.diagnostics import DIAGNOSTICS, load
from whatif.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "diagnostics.md"


def test_every_diagnostic_declares_its_question_and_run_time_and_is_documented():
    text = DOCS.read_text()
    for name in DIAGNOSTICS:
        module = load(name)
        assert module.QUESTION and module.RUNTIME and callable(module.add_arguments) and callable(module.run)
        assert f"`whatif diagnose {name}" in text, f"docs/diagnostics.md does not list {name}"


def test_list_and_bad_usage(capsys):
    assert main(["diagnose", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in DIAGNOSTICS)
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "no-such-thing"])
    assert exc.value.code == 2 and "unknown diagnostic" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "auroc-spread", "--n", "1"])
    assert exc.value.code == 2 and "between 2 and" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(DIAGNOSTICS))
def test_each_diagnostic_runs_end_to_end_on_a_tiny_checkpoint(name, tiny_checkpoint, capsys, tmp_path):
    extra = {
        "detail": ["--tau", "0", "0.3"],
        "finding-confusion": ["--out", str(tmp_path / "confusion.png")],
        "seed-guard": ["--lr", "0.01"],
        "auroc-spread": ["--draws", "20"],
    }.get(name, [])
    n = [] if name == "text-separation" else ["--n", "2"]
    assert main(["diagnose", name, "--checkpoint", tiny_checkpoint, *n, *extra]) == 0
    out = capsys.readouterr().out
    # Each prints its own table: the header, and a row per target (or finding) with numbers.
    header, row = {
        "auroc-spread": ("| n=2, 20 resamples | AUROC | SD over identities |", "| head - tail |"),
        "detail": ("detail 0     AUROC", "detail 0.3   AUROC"),
        "disentanglement": ("| finding (n=2) | recon SSIM |", "oracle-swap AUROC: tail"),
        "finding-confusion": ("truth: mean AUROC", "| Lung Lesion |"),
        "guidance-drift": ("| checkpoint (n=2) | round trip |", f"| {tiny_checkpoint} |"),
        "seed-guard": ("| policy | mean AUROC |", "| head@0.01 |"),
        "seed-signal": ("| target (n=2) | nearest centroid |", "| Pneumonia (tail) |"),
        "segmenter": ("| acquisition (n=2) | right lung | left lung | heart |", "| 256 -> 64 | 0."),
        "text-separation": ("| target | condition text |", "| Fracture (tail) |"),
    }[name]
    assert header in out and row in out, out
    if name == "finding-confusion":
        assert (tmp_path / "confusion.png").stat().st_size > 1000
