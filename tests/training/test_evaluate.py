"""training/evaluate.py: the report's verdicts against the issue's targets."""

from training.evaluate import against


def test_targets_are_judged_unrounded():
    assert against(0.84992, 0.85) == "0.8499 (target >= 0.85: missed)"  # 3 places would show 0.850
    assert against(0.853, 0.85) == "0.853 (target >= 0.85: met)"
    assert against(0.176, 0.05, at_least=False) == "0.176 (target <= 0.05: missed)"
    assert against(0.0501, 0.05, at_least=False) == "0.0501 (target <= 0.05: missed)"
    assert against(0.04, 0.05, at_least=False) == "0.040 (target <= 0.05: met)"


def test_seed_opt_overrides_parse_to_config_fields_before_any_work(capsys):
    import pytest

    from whatif.cli import main
    from whatif.eval_cmd import parse_seed_opt

    assert parse_seed_opt(["optimizer=adam", "lr=0.005", "max_iters=5"]) == {"optimizer": "adam", "lr": 0.005, "max_iters": 5}
    assert parse_seed_opt([]) == {}
    for bad, message in (("lr", "KEY=VALUE"), ("speed=3", "KEY=VALUE"), ("max_iters=2.5", "takes a int"), ("optimizer=sgd", "adam or normalized")):
        with pytest.raises(ValueError, match=message):
            parse_seed_opt([bad])
    # On the command line: one clear line (exit 2) before the checkpoint is even looked for.
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", "/nonexistent", "--n", "2", "--seed-opt", "lr=-1"])
    assert exc.value.code == 2 and "lr must be positive" in capsys.readouterr().err
