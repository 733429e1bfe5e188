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
    for n in ("1", "1001"):  # before any checkpoint is looked for
        with pytest.raises(SystemExit) as exc:
            cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--validation", "--n", n])
        assert exc.value.code == 2 and "--n must be between 2 and 1000" in capsys.readouterr().err


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


def test_out_of_range_settings_are_usage_errors_before_any_work(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("L", (64, 64), 128).save(image)
    base = ["generate", "--image", str(image), "--target", "small left effusion", "--out", str(tmp_path / "cf.png")]
    for flag, value, message in (
        ("--steps", "0", "steps"),
        ("--guidance", "40", "guidance"),
        ("--detail", "5", "detail"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, flag, value])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cf.png").exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["phantom", "render", "--identity-seed", "1", "--size", "10", "--out", str(tmp_path / "p.png")])
    assert exc.value.code == 2 and "between" in capsys.readouterr().err
