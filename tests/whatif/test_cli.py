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
    for bad in (["--n", "1001"], ["--n", "-1"], ["--table2-n", "1"]):  # before any checkpoint is looked for
        with pytest.raises(SystemExit) as exc:
            cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--validation", *bad])
        assert exc.value.code == 2 and "--n must be 0 or between 1 and 1000" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exc:  # the report's folder is made first, before any case runs
        cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--out", str(blocker / "sub" / "r.md")])
    assert exc.value.code == 2 and "cannot create its folder" in capsys.readouterr().err


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


def test_out_of_range_settings_are_usage_errors_before_any_work(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("L", (64, 64), 128).save(image)
    base = ["generate", "--image", str(image), "--target", "small left effusion", "--out", str(tmp_path / "cf.png")]
    base += ["--checkpoint", tiny_checkpoint]  # the settings' check, whatever state the embedded model is in
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


def _wide_input(path, bits=8):
    import numpy as np
    from PIL import Image

    from training.phantom.renderer import render

    grey = render(4, [], 0, 200).image[25:175]  # 200 x 150: non-square, not the model's grid
    Image.fromarray(grey if bits == 8 else (grey.astype(np.uint16) * 257)).save(path)
    return np.asarray(Image.open(path))


def test_generate_with_a_mask_and_candidates(tiny_checkpoint, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    given = _wide_input(tmp_path / "in.png")
    mask = np.zeros((150, 200), np.uint8)
    mask[30:120, 110:190] = 255  # the patient's left: the viewer's right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out, rep = tmp_path / "cf.png", tmp_path / "cf.json"
    code = cli.main(
        [
            *("generate", "--image", str(tmp_path / "in.png"), "--target", "moderate left pleural effusion"),
            *("--out", str(out), "--checkpoint", tiny_checkpoint, "--mask", str(tmp_path / "mask.png")),
            *("--candidates", "2", "--no-optimize-seed", "--report", str(rep)),
        ]
    )
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["region_source"] == "user" and line["verdict"]["status"] and line["verdict"]["reason"]
    img = Image.open(out)
    assert img.size == (200, 150) and img.mode == "L" and "SYNTHETIC" in img.info["Comment"]
    assert img.info["whatif:verdict"] == line["verdict"]["status"]
    result, region = np.asarray(img), np.asarray(Image.open(tmp_path / "cf.region.png"))
    assert region.shape == (150, 200) and not region[mask == 0].any()
    assert np.array_equal(result[region == 0], given[region == 0])
    report = json.loads(rep.read_text())
    assert report["verdict"]["status"] == line["verdict"]["status"] and len(report["candidates"]) == 2
    assert report["region"] == {
        "source": "user",
        "path": str(tmp_path / "cf.region.png"),
        "pixels": int(region.sum() // 255),
    }
    assert report["size"] == {"width": 200, "height": 150, "bits": 8}


def test_generate_keeps_16_bits_and_takes_a_box(tiny_checkpoint, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    given = _wide_input(tmp_path / "in16.png", bits=16)
    out = tmp_path / "cf16.png"
    args = ["generate", "--image", str(tmp_path / "in16.png"), "--target", "moderate right pleural effusion"]
    code = cli.main([*args, "--out", str(out), "--checkpoint", tiny_checkpoint, "--box", "10,20,90,140"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip())["region_source"] == "user"
    result, region = np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "cf16.region.png"))
    assert result.dtype == np.uint16 and result.shape == (150, 200)
    assert not region[:, 90:].any() and not region[:20].any() and not region[140:].any()
    assert np.array_equal(result[region == 0], given[region == 0])


def test_bad_regions_and_candidates_are_one_line_usage_errors(tiny_checkpoint, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    _wide_input(tmp_path / "in.png")
    for name, shape, box in (("small.png", (100, 100), (0, 0, 50, 50)), ("empty.png", (150, 200), None)):
        m = np.zeros(shape, np.uint8)
        if box:
            m[box[1] : box[3], box[0] : box[2]] = 255
        Image.fromarray(m).save(tmp_path / name)
    right = np.zeros((150, 200), np.uint8)
    right[20:130, 10:90] = 255  # the patient's right only
    Image.fromarray(right).save(tmp_path / "right.png")
    base = ["generate", "--image", str(tmp_path / "in.png"), "--target", "moderate left pleural effusion"]
    base += ["--out", str(tmp_path / "cf.png"), "--checkpoint", tiny_checkpoint]
    for extra, message in (
        (["--candidates", "0"], "between 1 and 8"),
        (["--candidates", "9"], "between 1 and 8"),
        (["--mask", str(tmp_path / "small.png")], "they must match"),
        (["--mask", str(tmp_path / "empty.png")], "empty"),
        (["--mask", str(tmp_path / "right.png")], "patient's left"),
        (["--mask", str(tmp_path / "in.json")], "no such file"),
        (["--box", "0,0,250,100"], "--box"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "cf.png").exists()


def test_a_region_error_is_a_usage_error():
    from model.regions import RegionError

    assert is_usage_error(RegionError("the region is empty"))
