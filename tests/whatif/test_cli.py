"""The CLI's error policy: a usage mistake is one line with exit status 2; a library bug is not
dressed up as one."""

from __future__ import annotations

import pytest

from model.modeling import CheckpointError
from whatif import cli
from whatif.errors import UsageError, is_usage_error


def test_usage_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "generate",
                "--image",
                str(tmp_path / "missing.png"),
                "--target",
                "small left effusion",
                "--out",
                str(tmp_path / "cf.png"),
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("whatif: error: --image") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--n", "1"])
    assert exc.value.code == 2 and "--n must be at least 2" in capsys.readouterr().err


def test_a_checkpoint_that_is_not_one_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["checkpoint", "init", "--preset", "no-such-preset", "--out", str(tmp_path / "ck")])
    assert exc.value.code == 2 and "no-such-preset" in capsys.readouterr().err


def test_a_library_bug_propagates_with_its_traceback(monkeypatch):
    def buggy(args):
        raise ValueError("a bug in the library, not the user's input")

    monkeypatch.setattr(cli.eval_cmd, "_eval", buggy)
    with pytest.raises(ValueError, match="a bug in the library"):
        cli.main(["eval", "--n", "2"])


def test_which_exceptions_count_as_usage_errors():
    assert is_usage_error(UsageError("x")) and is_usage_error(FileNotFoundError("x")) and is_usage_error(OSError("x"))
    assert is_usage_error(CheckpointError("not a checkpoint"))
    assert not is_usage_error(ValueError("x")) and not is_usage_error(KeyError("x"))
    assert not is_usage_error(RuntimeError("x"))
