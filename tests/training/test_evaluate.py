"""training/evaluate.py: the report's verdicts against the issue's targets."""

from training.evaluate import against


def test_targets_are_judged_unrounded():
    assert against(0.84992, 0.85) == "0.8499 (target >= 0.85: missed)"  # 3 places would show 0.850
    assert against(0.853, 0.85) == "0.853 (target >= 0.85: met)"
    assert against(0.176, 0.05, at_least=False) == "0.176 (target <= 0.05: missed)"
    assert against(0.0501, 0.05, at_least=False) == "0.0501 (target <= 0.05: missed)"
    assert against(0.04, 0.05, at_least=False) == "0.040 (target <= 0.05: met)"
