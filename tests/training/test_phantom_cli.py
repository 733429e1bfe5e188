"""`whatif phantom ...` as a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model.labels import CHEXPERT_LABELS
from whatif.cli import main


def test_generate_is_identical_for_any_worker_count_and_render_reproduces_it(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["phantom", "generate", "--n", "20", "--size", "64", "--seed", "3", "--out", str(a), "--quiet"]) == 0
    assert (
        main(
            [
                "phantom",
                "generate",
                "--n",
                "20",
                "--size",
                "64",
                "--seed",
                "3",
                "--out",
                str(b),
                "--workers",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    manifest = (a / "manifest.jsonl").read_text()
    assert manifest == (b / "manifest.jsonl").read_text()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert len(rows) == 20
    for row in rows:
        assert {"id", "path", "identity_seed", "render_seed", "findings", "labels", "report"} <= set(row)
        assert list(row["labels"]) == list(CHEXPERT_LABELS) and set(row["labels"].values()) <= {0, 1}
        assert (a / row["path"]).read_bytes() == (b / row["path"]).read_bytes()
        img = Image.open(a / row["path"])
        assert img.size == (64, 64) and img.mode == "L" and "SYNTHETIC" in img.info["Comment"]

    # The ground-truth path: `render` with a manifest row's seeds and findings gives its bytes.
    row = max(rows, key=lambda r: len(r["findings"]))
    out = tmp_path / "again.png"
    args = ["phantom", "render", "--identity-seed", str(row["identity_seed"]), "--render-seed", str(row["render_seed"])]
    args += ["--findings", json.dumps(row["findings"]), "--size", "64", "--out", str(out)]
    assert main(args) == 0
    assert out.read_bytes() == (a / row["path"]).read_bytes()

    # ... and its counterfactual without findings differs only where they were drawn.
    cf = tmp_path / "cf.png"
    masks = tmp_path / "m.npz"
    seeds = args[:6]
    main(seeds + ["--findings", "none", "--size", "64", "--out", str(cf)])
    main(args[:-2] + ["--out", str(tmp_path / "x.png"), "--masks", str(masks)])
    with np.load(masks) as z:
        union = np.any([z[k] for k in z.files], axis=0) if z.files else np.zeros((64, 64), bool)
    changed = np.asarray(Image.open(cf)) != np.asarray(Image.open(out))
    assert not changed[~union].any()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--findings", '[{"label": "Pneumothorx"}]'], "unknown finding label"),
        (["--findings", '[{"label": "Cardiomegaly", "location": "left"}]'], "has no location"),
        (["--size", "-5"], "must be positive"),
        (["--out", "/nonexistent-dir/x.png"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message, tmp_path):
    base = ["phantom", "render", "--identity-seed", "1", "--out", str(tmp_path / "o.png")]
    # The console script, as a user runs it.
    proc = subprocess.run([sys.executable, "-m", "whatif", *base, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_generate_into_unwritable_place_is_clear(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "generate", "--n", "2", "--size", "64", "--out", str(blocker / "sub"), "--quiet"])
    assert exc.value.code == 2
    assert "cannot write" in capsys.readouterr().err
