"""training/evaluate.py: the report's verdicts against the issue's targets."""

import pytest

from training.evaluate import against
from whatif.cli import main


def test_targets_are_judged_unrounded():
    assert against(0.84992, 0.85) == "0.8499 (target >= 0.85: missed)"  # 3 places would show 0.850
    assert against(0.853, 0.85) == "0.853 (target >= 0.85: met)"
    assert against(0.176, 0.05, at_least=False) == "0.176 (target <= 0.05: missed)"
    assert against(0.0501, 0.05, at_least=False) == "0.0501 (target <= 0.05: missed)"
    assert against(0.04, 0.05, at_least=False) == "0.040 (target <= 0.05: met)"


def test_seed_opt_overrides_parse_to_config_fields_before_any_work(capsys):
    import pytest

    from whatif.cli import main
    from whatif.errors import UsageError
    from whatif.eval_cmd import parse_seed_opt

    assert parse_seed_opt(["optimizer=adam", "lr=0.005", "max_iters=5"]) == {
        "optimizer": "adam",
        "lr": 0.005,
        "max_iters": 5,
    }
    assert parse_seed_opt([]) == {}
    assert parse_seed_opt(["guard=true"]) == {"guard": True} and parse_seed_opt(["guard=False"]) == {"guard": False}
    for bad, message in (
        ("lr", "KEY=VALUE"),
        ("speed=3", "KEY=VALUE"),
        ("max_iters=2.5", "takes a int"),
        ("optimizer=sgd", "adam or normalized"),
        ("guard=maybe", "takes a bool"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_seed_opt([bad])
    # On the command line: one clear line (exit 2) before the checkpoint is even looked for.
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", "/nonexistent", "--n", "2", "--seed-opt", "lr=-1"])
    assert exc.value.code == 2 and "lr must be positive" in capsys.readouterr().err


def test_identity_bootstrap_is_zero_when_every_identity_agrees_and_not_otherwise():
    import numpy as np
    import pytest

    from model.labels import CHEXPERT_LABELS
    from training.evaluate import TAIL, TARGETS, identity_bootstrap

    def outputs(score):  # probs[target][k]: the target's own label at score(k, target), every other label at 0
        out = {}
        for t in TARGETS:
            rows = []
            for k in range(6):
                p = np.zeros(len(CHEXPERT_LABELS))
                p[CHEXPERT_LABELS.index(t)] = score(k, t)
                rows.append(p)
            out[t] = rows
        return out

    # Every identity's counterfactual shows its target: AUROC 1 in every resample.
    assert identity_bootstrap(outputs(lambda k, t: 0.9), draws=50) == {
        "mean_auroc": 0.0,
        "tail_auroc": 0.0,
        "head_auroc": 0.0,
        "gap": 0.0,
    }

    # For the head targets half the identities show nothing: the head's AUROC, the mean and the
    # gap depend on which were drawn; the tail's does not.
    def half_head(k, t):
        return 0.9 if t in TAIL or k % 2 else 0.0

    spread = identity_bootstrap(outputs(half_head), draws=200)
    assert spread["tail_auroc"] == 0.0 and all(0.01 < spread[key] < 0.5 for key in ("mean_auroc", "head_auroc", "gap"))
    assert identity_bootstrap(outputs(half_head), draws=200) == spread  # seeded
    uneven = outputs(lambda k, t: 0.9)
    uneven[TARGETS[0]] = uneven[TARGETS[0]][:3]
    with pytest.raises(ValueError, match="one output per identity"):
        identity_bootstrap(uneven)


def test_the_case_iterator_is_the_protocol_and_validation_shares_no_identity_with_it():
    from training.evaluate import TARGETS, cases, eval_case, validation_cases

    evaluation = list(cases(2, 64))
    validation = list(validation_cases(2, 64))
    assert [(c.index, c.seed, c.target) for c in evaluation] == [(k, k, t) for k in range(2) for t in TARGETS]
    # Validation shares neither identities nor render seeds (side, zone, shape) with the evaluation.
    assert {c.identity for c in evaluation}.isdisjoint({c.identity for c in validation})
    assert {c.seed for c in evaluation}.isdisjoint({c.seed for c in validation})
    first = validation[0]
    src, true, text, mask = eval_case(first.identity, first.seed, first.target, 64)
    assert (first.source.image == src.image).all() and (first.truth.image == true.image).all()
    assert first.text == text and (first.mask == mask).all()
    assert [c.target for c in cases(1, 64, targets=("Fracture",))] == ["Fracture"]


@pytest.mark.slow
def test_eval_writes_the_faithfulness_report_its_records_and_both_sheets(tiny_checkpoint, tmp_path):
    import json

    out = tmp_path / "report.md"
    args = ["eval", "--checkpoint", str(tiny_checkpoint), "--n", "1", "--table2-n", "2", "--out", str(out)]
    assert main([*args, "--start", "noise"]) == 0
    text = out.read_text()
    assert text.index("## Edit faithfulness") < text.index("## The paper's Table 2 protocol")
    assert "**Valid edits: " in text and "--n 1 --table2-n 2 --start noise`" in text
    records = json.loads(out.with_suffix(".json").read_text())
    assert records["calls"] == len(records["edits"]) == 34 and "images" not in records
    assert all(e["outside_identical"] for e in records["edits"])  # the pipeline keeps the input outside
    for sheet in ("report-edits.png", "report-sheet.png"):
        assert (tmp_path / sheet).stat().st_size > 5000
