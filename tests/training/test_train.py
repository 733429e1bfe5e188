"""`whatif train` on the tiny preset: every stage runs, resumes, and refuses bad runs before starting."""

import json
import tomllib

import numpy as np
import pytest
import torch

from model.pipeline import CounterfactualPipeline
from training.loop import TrainingError
from training.state import load_state, save_state
from training.train import train
from whatif.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    report = train("all", "tiny", "phantom:24", out, steps=6, batch_size=4)
    return out, report


@pytest.mark.slow
def test_all_stages_write_a_loadable_checkpoint(run):
    out, report = run
    for stage in ("stage0", "stage1", "stage2", "classifier"):
        rows = [json.loads(line) for line in (out / "metrics" / f"{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 7))
        assert all(np.isfinite(v) for r in rows for k, v in r.items())
        assert (out / "curves" / f"{stage}.png").stat().st_size > 1000
    stage1 = [json.loads(line) for line in (out / "metrics" / "stage1.jsonl").read_text().splitlines()]
    assert "pc" in stage1[4] and "id" in stage1[4] and "pc" not in stage1[3]  # the swap every 5th step
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    assert pipe.config["training"]["state"] == "trained on phantoms"
    assert set(pipe.centroids) >= {"Pneumonia", "No Finding"}
    assert pipe.diffusion.config.latent_scale != 1.0  # measured on the data before stage 2
    from training.phantom.renderer import render

    out_img = pipe(render(1, [], 0, 64).image, "mild edema", steps=2, optimize_seed=False)
    assert out_img.image.shape == (64, 64)


@pytest.mark.slow
def test_resume_continues_where_it_stopped(run):
    out, _ = run
    before = CounterfactualPipeline.from_pretrained(out / "checkpoint").vae.state_dict()
    state = out / "state" / "stage1" / "state.json"
    first_seconds = json.loads(state.read_text())["seconds"]
    train("stage1", "tiny", "phantom:24", out, steps=8, batch_size=4, resume=True)
    # Wall time adds up over resumed runs (the model card reports it).
    assert json.loads(state.read_text())["seconds"] > first_seconds
    assert (
        CounterfactualPipeline.from_pretrained(out / "checkpoint").config["training"]["stages"]["stage1"]["seconds"]
        > first_seconds
    )
    rows = [json.loads(line)["step"] for line in (out / "metrics" / "stage1.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 9))  # steps 7 and 8 only were added
    # A run killed between two saves left steps past the saved state and a line cut short: the
    # resumed run drops them instead of writing those steps twice.
    with open(out / "metrics" / "stage1.jsonl", "a") as fh:
        fh.write('{"step": 9, "recon": 0.5}\n{"step": 10, "rec')
    train("stage1", "tiny", "phantom:24", out, steps=9, batch_size=4, resume=True)
    rows = [json.loads(line)["step"] for line in (out / "metrics" / "stage1.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 10))
    after = CounterfactualPipeline.from_pretrained(out / "checkpoint").vae.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # A state saved before wall time was kept: the earlier sittings' time comes from the history.
    meta = json.loads(state.read_text())
    del meta["seconds"]
    state.write_text(json.dumps(meta))
    earlier = CounterfactualPipeline.from_pretrained(out / "checkpoint").config["training"]["stages"]["stage1"][
        "seconds"
    ]
    train("stage1", "tiny", "phantom:24", out, steps=10, batch_size=4, resume=True)
    assert (
        CounterfactualPipeline.from_pretrained(out / "checkpoint").config["training"]["stages"]["stage1"]["seconds"]
        > earlier
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data="/no/such/dir"), "no such file"),
        (dict(data="phantom:0"), "empty"),
        (dict(data="phantom:3"), "fewer than one batch"),
        (dict(stage="stage9"), "unknown stage"),
    ],
)
def test_bad_runs_fail_before_training(tmp_path, kwargs, message):
    args = dict(stage="stage1", preset="tiny", data="phantom:24", out=tmp_path / "r", steps=2, batch_size=4)
    args.update(kwargs)
    with pytest.raises(TrainingError, match=message):
        train(**args)
    assert not (tmp_path / "r" / "state").exists()


@pytest.mark.slow
def test_resume_with_other_preset_or_without_flag_is_refused(run, capsys):
    out, _ = run
    with pytest.raises(TrainingError, match="trained with 'tiny'"):
        train("stage1", "phantom-128", "phantom:24", out, steps=2, batch_size=4, resume=True)
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "stage1",
                "--preset",
                "tiny",
                "--data",
                "phantom:24",
                "--out",
                str(out),
                "--steps",
                "2",
                "--batch-size",
                "4",
            ]
        )
    assert "pass --resume" in capsys.readouterr().err


def test_state_round_trip_includes_optimizer(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(tmp_path, {"m": m}, {"o": opt}, {"step": 1})
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    assert load_state(tmp_path, {"m": m2}, {"o": opt2})["step"] == 1
    assert torch.equal(m.weight, m2.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and float(s1["step"]) == float(s2["step"])


@pytest.mark.slow
def test_eval_writes_table_and_sheet(run, tmp_path):
    from training.evaluate import TARGETS, auroc, evaluate_counterfactuals, write_report

    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auroc([0.1], [0.9]) == 0.0 and auroc([0.5], [0.5]) == 0.5
    out, _ = run
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    pipe.config["sampling"]["steps"] = 2
    pipe.config["seed_optimization"]["max_iters"] = 2
    result = evaluate_counterfactuals(pipe, 2, progress=False, start="noise", guidance=2.0)
    assert len(result["table"]) == 3 * len(TARGETS)
    assert all(
        0.0 <= v["auroc"] <= 1.0 and -1.0 <= v["ssim"] <= 1.0
        for (_, opt), v in result["table"].items()
        if opt != "true"
    )
    # The judge's ceiling: the classifier on the true counterfactuals, which the model does not touch.
    truth = {t: result["table"][(t, "true")]["auroc"] for t in TARGETS}
    for p in pipe.vae.parameters():  # another model, the same judge and ground truth
        p.data.mul_(0.5)
    again = evaluate_counterfactuals(pipe, 2, progress=False, start="noise", guidance=2.0)
    assert {t: again["table"][(t, "true")]["auroc"] for t in TARGETS} == truth
    # --validation: other identities (other ground truth), and the reproducing command says so.
    val = evaluate_counterfactuals(
        pipe,
        2,
        progress=False,
        start="noise",
        guidance=2.0,
        validation=True,
        seed_opt={"optimizer": "normalized", "guard": True},
    )
    assert val["options"].endswith(" --seed-opt optimizer=normalized --seed-opt guard=True --validation")
    assert not np.array_equal(val["sheet"][(0, "input")], again["sheet"][(0, "input")])
    assert val["seed_optimization"]["optimizer"] == "normalized" and result["seed_optimization"]["optimizer"] == "adam"
    # The guard's verdicts are counted per target (the share of requests that kept the optimised seed).
    kept = [val["table"][(t, True)]["kept"] for t in TARGETS]
    assert all(0.0 <= k <= 1.0 for k in kept) and all(result["table"][(t, True)]["kept"] == 1.0 for t in TARGETS)
    write_report(val, pipe, "ckpt", tmp_path / "v.md", tmp_path / "v-sheet.png")
    vtext = (tmp_path / "v.md").read_text()
    assert "the findings-head guard kept: " in vtext and f"No Finding {kept[TARGETS.index('No Finding')]:.2f}." in vtext
    assert all(0.0 <= v <= 1.0 for v in truth.values())
    md, png = tmp_path / "m.md", tmp_path / "m-sheet.png"
    write_report(result, pipe, f"whatif eval --checkpoint ckpt --n 0 --table2-n 2{result['options']}", md, png)
    text = md.read_text()
    assert text.count("\n| ") == 2 + len(TARGETS) and "Pneumonia (tail)" in text and png.stat().st_size > 5000
    assert "--table2-n 2 --start noise --guidance 2.0`" in text and "guidance 2.0, start noise, steps 2" in text
    assert "| AUROC (true cf.) |" in text and "The evaluation classifier on the true counterfactuals" in text
    assert (
        "Seed optimisation: batch_seeds 1, guard False, lr 0.1, max_iters 2, method x0, " in text
        and "guard kept" not in text
    )
    # Beside each setting's AUROCs: how much they owe to which 2 identities were drawn.
    assert set(result["spread"]) == {False, True} and all(
        0.0 <= v <= 0.5 for sd in result["spread"].values() for v in sd.values()
    )
    assert text.count("Standard deviation over resamples of the 2 identities: mean AUROC") == 2

    from training.model_card import write_model_card

    card = write_model_card(out / "checkpoint", pipe.config, result, "whatif eval --checkpoint X --n 2").read_text()
    assert "not for clinical use" in card and "| stage1 |" in card and "--data phantom:24" in card
    assert "With seed optimisation: mean AUROC" in card and "Total training wall time" in card
    assert "Sampling: detail 0.0, guidance 2.0, start noise, steps 2." in card and "(target >= 0.85: " in card
    # The classifier stage records its acquisition augmentation; the card's command leaves out
    # what is at its default.
    assert pipe.config["training"]["stages"]["classifier"]["runs"][-1]["acquisition_augment"] == 0.8
    assert "whatif train classifier --preset tiny --data phantom:24 --out RUN --steps 6 --batch-size 4 --resume" in card


@pytest.mark.slow
def test_same_command_under_torchrun_two_processes(tmp_path):
    # Data parallel on the CPU (gloo): two ranks, one run directory written by rank 0.
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        "-m",
        "whatif",
        "train",
        "stage2",
        "--preset",
        "tiny",
        "--data",
        "phantom:16",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (out / "metrics" / "stage2.jsonl").read_text().splitlines()
    assert len(rows) == 2 and CounterfactualPipeline.from_pretrained(out / "checkpoint").diffusion is not None


def test_balanced_classifier_data_is_balanced_and_apart():
    from collections import Counter

    from training.datasets.balanced import DRAWABLE, BalancedPhantomDataset
    from training.evaluate import EVAL_IDENTITY_BASE

    d = BalancedPhantomDataset(1400, 64, 7919)
    cases = [d.findings(i) for i in range(len(d))]
    counts = Counter(f.label for _, _, found in cases for f in found)
    expected = len(d) / (len(DRAWABLE) + 1) * 1.3  # one finding, a second with probability 0.3
    assert set(counts) == set(DRAWABLE) and all(0.6 * expected < c < 1.4 * expected for c in counts.values()), counts
    assert all(identity < EVAL_IDENTITY_BASE for identity, _, _ in cases)
    item = d[0]
    assert item["image"].shape == (1, 64, 64) and item["labels"].shape == (14,)


def test_counterfactual_view_is_the_same_identity_with_balanced_findings():
    from collections import Counter

    from training.datasets.phantom import PhantomDataset
    from training.phantom.renderer import render

    d = PhantomDataset(300, 64, 3)
    views = [d.counterfactual_view(i) for i in range(len(d))]
    counts = Counter(k for v in views for k, on in enumerate(v["labels"].tolist()) if on)
    assert len(counts) >= 12, counts  # every drawn finding and No Finding, not only the prevalent ones
    # Pixel-aligned with the case: a view without findings is the case's identity rendered clean.
    i = next(i for i, v in enumerate(views) if v["labels"][0] == 1 and v["labels"][1:].sum() == 0)
    case = d.case(i)
    clean = render(case.identity_seed, [], case.render_seed, 64).image.astype(np.float32) / 127.5 - 1.0
    assert torch.allclose(views[i]["image"][0], torch.from_numpy(clean))
    # The stages read them batched: the same views, stacked.
    pair = [i, (i + 1) % len(d)]
    batch = d.counterfactual_batch(pair)
    assert torch.equal(batch["image"], torch.stack([views[k]["image"] for k in pair]))
    assert torch.equal(batch["labels"], torch.stack([views[k]["labels"] for k in pair]))


def test_paired_counterfactual_term_trains_and_is_recorded(tmp_path):
    from training.model_card import model_card
    from training.options import Hyper

    out = tmp_path / "paired"
    train("stage1", "tiny", "phantom:24", out, steps=5, batch_size=4, hp=Hyper(paired_weight=1.0))
    rows = [json.loads(line) for line in (out / "metrics" / "stage1.jsonl").read_text().splitlines()]
    assert all(r["paired"] > 0 for r in rows)
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    assert pipe.config["training"]["stages"]["stage1"]["runs"][-1]["paired_weight"] == 1.0
    assert "--kl-weight 0.1" not in model_card(pipe.config, None, out / "checkpoint", "")
    assert "--steps 5 --batch-size 4 --paired-weight 1 --resume" in model_card(
        pipe.config, None, out / "checkpoint", ""
    )


def test_paired_term_needs_phantom_pairs(tmp_path):
    from training.options import Hyper

    gen = tmp_path / "gen"
    assert main(["phantom", "generate", "--n", "8", "--size", "64", "--out", str(gen), "--quiet"]) == 0
    with pytest.raises(TrainingError, match="paired"):
        train("stage1", "tiny", str(gen), tmp_path / "r", steps=1, batch_size=4, hp=Hyper(paired_weight=1.0))


def test_stage0_freeze_keeps_a_classifier_trained_since(tmp_path):
    from training.model_card import model_card
    from training.options import Hyper

    out = tmp_path / "s0"
    train("stage0", "tiny", "phantom:24", out, steps=3, batch_size=4)
    train("classifier", "tiny", "phantom:24", out, steps=2, batch_size=4, resume=True)
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    clf = {k: v.clone() for k, v in pipe.eval_classifier.state_dict().items()}
    clip = {k: v.clone() for k, v in pipe.contrastive.state_dict().items()}
    train("stage0", "tiny", "phantom:24", out, steps=5, batch_size=4, resume=True, hp=Hyper(freeze=("classifier",)))
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    # Stage 0's saved copy of the classifier (step 3) is not put back over the classifier stage's.
    assert all(torch.equal(v, clf[k]) for k, v in pipe.eval_classifier.state_dict().items())
    assert any(not torch.equal(v, clip[k]) for k, v in pipe.contrastive.state_dict().items())
    rows = [json.loads(line) for line in (out / "metrics" / "stage0.jsonl").read_text().splitlines()]
    assert "classifier" in rows[2] and "classifier" not in rows[4] and "contrastive" in rows[4]
    card = model_card(pipe.config, None, out / "checkpoint", "")
    assert "--steps 3 --batch-size 4\n" in card and "--steps 5 --batch-size 4 --freeze classifier --resume" in card
    assert set(pipe.config["training"]["stages"]["stage0"]["final"]) == {"contrastive", "identity", "classifier"}
    # Unfrozen again: the classifier is missing from the saved state and continues from the checkpoint.
    train("stage0", "tiny", "phantom:24", out, steps=6, batch_size=4, resume=True)
    rows = [json.loads(line) for line in (out / "metrics" / "stage0.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and "classifier" in rows[5]
    # The card lists the sittings in the order they ran, not stage by stage.
    card = model_card(CounterfactualPipeline.from_pretrained(out / "checkpoint").config, None, out / "checkpoint", "")
    order = [
        line.split()[2] + line.split("--steps ")[1].split()[0]
        for line in card.splitlines()
        if line.startswith("whatif train")
    ]
    assert order == ["stage03", "classifier2", "stage05", "stage06"]


def test_stage0_freeze_text_trains_the_image_tower_only(tmp_path):
    from training.model_card import model_card
    from training.options import Hyper

    out = tmp_path / "s0"
    train("stage0", "tiny", "phantom:24", out, steps=3, batch_size=4)
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    before = {k: v.clone() for k, v in pipe.contrastive.clip.state_dict().items()}
    text_ids = {id(p) for p in pipe.contrastive.text_parameters()}
    text_names = {n for n, p in pipe.contrastive.clip.named_parameters() if id(p) in text_ids}
    assert {"token_embedding.weight", "positional_embedding", "text_projection"} <= text_names
    assert not any(n.startswith("visual.") for n in text_names) and "logit_scale" not in text_names
    # Resumed from a sitting that trained both towers: the image tower's optimiser starts fresh.
    train(
        "stage0",
        "tiny",
        "phantom:24",
        out,
        steps=5,
        batch_size=4,
        resume=True,
        hp=Hyper(freeze=("classifier", "identity", "text")),
    )
    after = CounterfactualPipeline.from_pretrained(out / "checkpoint").contrastive.clip.state_dict()
    # Stage 2 reads the text tower's token features: they must not move.
    assert all(torch.equal(after[n], before[n]) for n in text_names)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("visual."))
    state = json.loads((out / "state" / "stage0" / "state.json").read_text())
    assert set(state["param_groups"]) == {"contrastive_image"}
    card = model_card(CounterfactualPipeline.from_pretrained(out / "checkpoint").config, None, out / "checkpoint", "")
    assert "--steps 5 --batch-size 4 --freeze classifier --freeze identity --freeze text --resume" in card
    # Both towers again: a fresh optimiser of the full set, the text tower trains.
    train(
        "stage0",
        "tiny",
        "phantom:24",
        out,
        steps=6,
        batch_size=4,
        resume=True,
        hp=Hyper(freeze=("classifier", "identity")),
    )
    again = CounterfactualPipeline.from_pretrained(out / "checkpoint").contrastive.clip.state_dict()
    assert any(not torch.equal(again[n], after[n]) for n in text_names)


def test_stage0_freeze_image_trains_the_text_tower_only(tmp_path):
    from training.options import Hyper

    out = tmp_path / "s0"
    train("stage0", "tiny", "phantom:24", out, steps=3, batch_size=4)
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    before = {k: v.clone() for k, v in pipe.contrastive.clip.state_dict().items()}
    train(
        "stage0",
        "tiny",
        "phantom:24",
        out,
        steps=5,
        batch_size=4,
        resume=True,
        hp=Hyper(freeze=("classifier", "identity", "image")),
    )
    pipe = CounterfactualPipeline.from_pretrained(out / "checkpoint")
    after = pipe.contrastive.clip.state_dict()
    # E_CXR, which stage 1, the reference centroids and seed optimisation read, must not move.
    visual = [k for k in before if k.startswith("visual.")]
    assert visual and all(torch.equal(after[k], before[k]) for k in visual)
    assert not torch.equal(after["token_embedding.weight"], before["token_embedding.weight"])
    state = json.loads((out / "state" / "stage0" / "state.json").read_text())
    assert set(state["param_groups"]) == {"contrastive_text"}
    assert pipe.config["training"]["stages"]["stage0"]["runs"][-1]["freeze"] == ["classifier", "identity", "image"]


@pytest.mark.parametrize(
    "freeze,message",
    [
        (("contrastive", "text"), "--freeze contrastive already freezes both towers"),
        (("contrastive", "image"), "--freeze contrastive already freezes both towers"),
        (("text", "image"), "leaves the contrastive model nothing to train"),
    ],
)
def test_freezing_both_towers_twice_over_is_refused(tmp_path, freeze, message):
    from training.options import Hyper

    with pytest.raises(TrainingError, match=message):
        train("stage0", "tiny", "phantom:24", tmp_path / "bad", steps=2, batch_size=4, hp=Hyper(freeze=freeze))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "stage,freeze",
    [("stage1", ("classifier",)), ("stage0", ("contrastive", "identity", "classifier")), ("stage0", ("vae",))],
)
def test_bad_freeze_is_refused_before_training(tmp_path, stage, freeze):
    from training.options import Hyper

    with pytest.raises(TrainingError, match="--freeze applies to stage0 only"):
        train(stage, "tiny", "phantom:24", tmp_path / "bad", steps=2, batch_size=4, hp=Hyper(freeze=freeze))
    assert not (tmp_path / "bad").exists()


def test_curves_keep_metrics_that_later_sittings_stop_logging(tmp_path):
    from PIL import Image

    from training.loop import plot_curves

    both = tmp_path / "both.jsonl"
    both.write_text(
        "".join(json.dumps({"step": s, "contrastive": 3.0 - s / 10, "classifier": 0.5}) + "\n" for s in range(1, 4))
        + "".join(json.dumps({"step": s, "contrastive": 3.0 - s / 10}) + "\n" for s in range(4, 7))
    )
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"step": s, "contrastive": 1.0}) + "\n" for s in range(1, 7)))
    plot_curves(both, tmp_path / "both.png", "stage0")
    plot_curves(one, tmp_path / "one.png", "stage0")
    # One panel per metric, 3.2 inches each: the frozen sitting's missing classifier keeps its panel.
    assert Image.open(tmp_path / "both.png").width == pytest.approx(
        2 * Image.open(tmp_path / "one.png").width, rel=0.02
    )


def test_each_option_is_declared_once_and_read_by_the_checks_the_history_and_the_card(tmp_path, capsys):
    from training.options import Hyper

    # The history's keys and values are the ones older checkpoints hold.
    paired = Hyper(kl_weight=0.001, paired_weight=1.0, paired_focus=0.0)
    assert Hyper().record("stage1") == {"lr": 1e-4, "kl_weight": 0.1}
    assert paired.record("stage1") == {"lr": 1e-4, "kl_weight": 0.001, "paired_weight": 1.0, "paired_focus": 0.0}
    assert Hyper().record("classifier") == {"lr": 1e-4, "acquisition_augment": 0.8}
    assert Hyper(freeze=("identity", "classifier")).record("stage0") == {
        "lr": 1e-4,
        "freeze": ["classifier", "identity"],
    }
    assert Hyper(kl_weight=0.001).record("stage2") == {"lr": 1e-4}
    # The card's command repeats what differs from the defaults; a sitting recorded before
    # acquisition augmentation existed trained without it.
    assert Hyper.flags("stage1", paired.record("stage1")) == " --kl-weight 0.001 --paired-weight 1 --paired-focus 0"
    assert Hyper.flags("classifier", {"to_step": 1000}) == " --acquisition-augment 0"
    assert (
        Hyper.flags("stage0", {"lr": 1e-3, "freeze": ["classifier", "identity"]})
        == " --lr 0.001 --freeze classifier --freeze identity"
    )
    # Checked before anything trains.
    assert Hyper(kl_weight=0.001).problem("stage2") == "--kl-weight applies to stage1 only, not stage2"
    assert Hyper(kl_weight=0.001).problem("all") is None and paired.problem("stage1") is None
    assert Hyper(paired_focus=0.0).problem("stage1") == "--paired-focus qualifies --paired-weight; pass that too"
    assert "is a probability, in [0, 1]" in Hyper(acquisition_augment=1.5).problem("classifier")
    assert "is a weight, at least 0" in Hyper(kl_weight=-1.0).problem("stage1")
    with pytest.raises(ValueError, match="unknown option swap_every"):
        Hyper.from_options({"swap_every": 10})
    assert Hyper.from_options({"paired_weight": 1, "freeze": ["text"]}) == Hyper(paired_weight=1.0, freeze=("text",))
    # The command line's flags are the fields'.
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "stage2",
                "--preset",
                "tiny",
                "--data",
                "phantom:24",
                "--out",
                str(tmp_path / "r"),
                "--kl-weight",
                "0.001",
            ]
        )
    assert "--kl-weight applies to stage1 only, not stage2" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


TINY_RECIPE = """
preset = "tiny"
data = "phantom:24"

[[sitting]]
stage = "stage0"
steps = 2
batch_size = 4
why = "the encoders first"

[[sitting]]
stage = "stage1"
steps = 2
batch_size = 4
kl_weight = 0.001
why = "then stage 1"

[[sitting]]
stage = "stage1"
steps = 3
batch_size = 4
kl_weight = 0.001
paired_weight = 1
"""


def test_a_recipe_runs_its_sittings_and_a_rerun_skips_those_done(tmp_path, monkeypatch, capsys):
    import training.train as train_module
    from training.model_card import model_card

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    sittings, sitting, calls = [], train_module.train, iter(range(100))

    def interrupted(stage, *args, **kwargs):
        sittings.append((stage, args[3], args[5]))  # stage, steps, resume
        if next(calls) == 1:
            raise KeyboardInterrupt  # killed as the second sitting starts
        return sitting(stage, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_recipe(recipe, out)
    assert sittings == [("stage0", 2, False), ("stage1", 2, True)]
    sittings.clear()
    assert main(["train", "--recipe", str(recipe), "--out", str(out)]) == 0
    assert sittings == [("stage1", 2, True), ("stage1", 3, True)]  # the first sitting is not run again
    assert "2 sittings run, 1 done before" in capsys.readouterr().out
    sittings.clear()
    assert main(["train", "--recipe", str(recipe), "--out", str(out)]) == 0 and sittings == []
    config = CounterfactualPipeline.from_pretrained(out / "checkpoint").config
    assert config["training"]["recipe"] == str(recipe)
    assert [r["kl_weight"] for r in config["training"]["stages"]["stage1"]["runs"]] == [0.001, 0.001]
    assert config["training"]["stages"]["stage1"]["runs"][-1]["paired_weight"] == 1.0
    card = model_card(config, None, out / "checkpoint", "")
    assert f"Trained by `whatif train --recipe {recipe} --out RUN`" in card
    assert "--steps 3 --batch-size 4 --kl-weight 0.001 --paired-weight 1 --resume" in card
    # Another recipe's sittings are refused in this run; so are a stage and options beside --recipe.
    other = tmp_path / "other.toml"
    other.write_text(
        TINY_RECIPE.replace("steps = 2\nbatch_size = 4\nkl_weight", "steps = 4\nbatch_size = 4\nkl_weight")
    )
    with pytest.raises(SystemExit):
        main(["train", "--recipe", str(other), "--out", str(out)])
    assert "holds sittings other than the first 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "stage1", "--recipe", str(recipe), "--out", str(out), "--kl-weight", "0.1"])
    assert "drop kl_weight, stage" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_RECIPE.replace("kl_weight = 0.001\nwhy", "swap_every = 10\nwhy"))
    with pytest.raises(TrainingError, match="sitting 2: unknown option swap_every"):
        train_module.train_recipe(bad, tmp_path / "bad")


def test_the_shipped_recipe_is_the_shipped_history_and_the_card_names_it():
    from pathlib import Path

    from training.model_card import _provenance
    from training.train import load_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "phantom-128.toml")
    assert (recipe.preset, recipe.data) == ("phantom-128", "phantom:50000")
    assert all(s.why and len(s.why) < 120 for s in recipe.sittings)
    # The Makefile's target is the recipe, one command.
    assert "whatif train --recipe recipes/phantom-128.toml --out $(RUN)" in (root / "Makefile").read_text()
    # Its sittings are the shipped checkpoint's, but for the classifier's first (two sittings there).
    config = json.loads((root / "model" / "weights" / "default" / "config.json").read_text())
    stages = config["training"]["stages"]
    ran = sorted(((r["sitting"], name, r["to_step"]) for name, st in stages.items() for r in st["runs"]))
    assert [(n, s) for _, n, s in ran if (n, s) != ("classifier", 1000)] == [
        (s.stage, s.steps) for s in recipe.sittings
    ]
    shipped = root / "model" / "weights" / "default"
    text = "\n".join(_provenance(config["training"], "phantom-128", shipped))
    commits = tomllib.loads((root / "recipes" / "phantom-128.toml").read_text())["shipped"]
    assert "recipes/phantom-128.toml" in text and commits["weights_commit"] in text and "297e628" in text
    assert "causal" in text and "argmax" in text and "concurrently" in text and "initial weights" in text
    plain = "The stage commands, in the order they ran:"
    assert "\n".join(_provenance({"data": "phantom:24"}, "tiny", shipped)) == plain
    # A run of the same preset and data elsewhere is not the shipped weights.
    assert "\n".join(_provenance(config["training"], "phantom-128", Path("/tmp/some-run/checkpoint"))) == plain
