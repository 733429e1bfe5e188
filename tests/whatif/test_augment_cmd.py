"""`whatif augment` at the command line: a summary at the end; the user's mistakes as one line
with exit status 2, before any work."""

from __future__ import annotations

import pytest

from whatif import cli


def _run(*args) -> int:
    return cli.main(["augment", *args])


def test_a_run_prints_its_summary(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    args = ["--data", "phantom:2:4", "--targets", "Fracture", "--out", str(out), "--checkpoint", tiny_checkpoint]
    assert _run(*args) == 0
    said = capsys.readouterr().out
    first = said.splitlines()[0]
    assert "counterfactuals planned" in first and f"kept in {out}" in first
    assert (out / "manifest.jsonl").is_file()
    assert _run(*args) == 0 and ", 0 now;" in capsys.readouterr().out  # a rerun finds it done


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--data", "phantom:2", "--targets", "Fracture,banana"], "unknown target 'banana'"),
        (["--data", "phantom:0", "--targets", "Fracture"], "the dataset is empty"),
        (["--data", "NOWHERE", "--targets", "Fracture"], "no such directory"),
        (["--data", "phantom:2", "--targets", "Fracture", "--per-image", "0"], "--per-image must be at least 1"),
        (["--data", "phantom:2", "--targets", "Fracture", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_mistakes_are_one_line_before_any_work(tmp_path, capsys, args, said):
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    with pytest.raises(SystemExit) as exc:
        _run(*args, "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and said in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_directory_of_another_run_is_refused(tmp_path, tiny_checkpoint, capsys):
    out = str(tmp_path / "out")
    assert _run("--data", "phantom:1:4", "--targets", "Fracture", "--out", out, "--checkpoint", tiny_checkpoint) == 0
    with pytest.raises(SystemExit) as exc:
        _run("--data", "phantom:1:4", "--targets", "Edema", "--out", out, "--checkpoint", tiny_checkpoint)
    assert exc.value.code == 2 and "holds another run's manifest" in capsys.readouterr().err
