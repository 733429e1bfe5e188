"""MODEL_CARD.md for a trained checkpoint: data, recipe, commands, wall time, metrics, intended use.

Written from what the checkpoint itself records (`config.json` -> "training": the data spec,
seed, the recipe it was trained by and, per stage, steps, batch size, seconds, final losses and
each sitting's options) and from a `whatif eval` result, so that the card cannot drift from the
weights it sits beside. Shipped weights trained before their recipe existed are described by the
recipe's `[shipped]` table: the commits they came from and where they differ from a run of it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .evaluate import sampling_text, seed_opt_text, summary, summary_lines
from .faithfulness import headline
from .options import STAGES, Hyper

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _shipped_recipe(preset: str, data: str, checkpoint: Path) -> tuple[str, dict] | None:
    """The recipe (its path and `[shipped]` table) whose shipped weights are `checkpoint`: the same
    preset and data, and the directory its table names (a run of the same preset elsewhere is not)."""
    for path in sorted(RECIPES.glob("*.toml")):
        recipe = tomllib.loads(path.read_text())
        shipped = recipe.get("shipped")
        if not shipped or recipe.get("preset") != preset or recipe.get("data") != data:
            continue
        if Path(checkpoint).resolve() == (RECIPES.parent / shipped["weights"]).resolve():
            return f"recipes/{path.name}", shipped
    return None


def _provenance(tr: dict, preset: str, checkpoint: Path) -> list[str]:
    """Where the weights came from: the recipe a run was trained by, or, for shipped weights trained
    before their recipe existed, the commits and how they differ from a run of the recipe."""
    if tr.get("recipe"):
        return [f"Trained by `whatif train --recipe {tr['recipe']} --out RUN`; its sittings, in the order they ran:"]
    shipped = _shipped_recipe(preset, tr.get("data"), checkpoint)
    if shipped is None:
        return ["The stage commands, in the order they ran:"]
    recipe, table = shipped
    return [
        f"Recipe: `{recipe}` (`make train-default` runs `whatif train --recipe {recipe} --out RUN`).",
        "",
        f"These are the shipped weights ({table['weights']}), last changed at commit {table['weights_commit']}; "
        f"{table['code_commit']} is the last",
        "commit before the recipe. They were trained before it existed, sitting by sitting over several sessions",
        "and code versions, with the commands below. Where they differ from a fresh run of the recipe:",
        "",
        *[f"- {line}" for line in table.get("differs", [])],
        "",
        "The stage commands, in the order they ran:",
    ]


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def model_card(
    config: dict, eval_result: dict | None, checkpoint: Path, eval_command: str, faithfulness: dict | None = None
) -> str:
    tr = config.get("training", {})
    stages = tr.get("stages", {})
    preset = config.get("preset")
    res = config["preprocessing"]["resolution"]
    seconds = sum(float(stages[s].get("seconds", 0.0)) for s in stages)
    lines = [
        f"# whatif-cxr default model ({preset})",
        "",
        "**Trained on synthetic phantom radiographs only. For demonstration and testing of the",
        "whatif-cxr software; not for clinical use. Every image it makes is synthetic.**",
        "",
        "## Data",
        "",
        f"`{tr.get('data', 'unknown')}` (master seed "
        f"{tr.get('seed', 'unknown')}): phantom chest radiographs rendered on the",
        f"fly at {res}x{res} by `training/phantom` (docs/phantom.md), findings drawn with CheXpert-like",
        "prevalence, reports written by the phantom's report generator and refined by the default rule",
        "refiner. The evaluation classifier is trained on phantoms no other stage sees (seed + 7919);",
        "the evaluation below uses identities none of the training saw.",
        "",
        "## Training (2-core CPU, no GPU)",
        "",
        "| stage | what | steps | batch | wall time | final losses |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    what = {
        "stage0": "contrastive E_CXR + text encoder, identity encoder E_ID, evaluation classifier",
        "stage1": "VAE + transformer T + findings head (Algorithm 1, lines 1-23)",
        "stage2": "pathology diffusion on z^n (Algorithm 1, lines 24-36)",
        "classifier": "evaluation classifier again, on class-balanced phantoms of its own seed",
        "segmenter": "anatomy segmenter (lungs, heart) for the edit regions, on the phantom's exact masks",
        "editor": "paired editor: the generated pathology onto the input's pixels, from exact phantom pairs",
    }
    for name in STAGES:
        if name not in stages:
            continue
        st = stages[name]
        final = ", ".join(f"{k} {v:.4f}" for k, v in st.get("final", {}).items())
        lines.append(
            f"| {name} | {what[name]} | {st['steps']} | {st['batch_size']} "
            f"| {float(st['seconds']) / 60:.0f} min | {final} |"
        )
    lines += [
        "",
        f"Total training wall time: {seconds / 3600:.2f} h.",
        "",
        *_provenance(tr, preset, checkpoint),
        "",
        "```",
    ]
    sittings = [
        (name, k, run)
        for name in STAGES
        if name in stages
        for k, run in enumerate(
            stages[name].get("runs") or [{"to_step": stages[name]["steps"], "batch_size": stages[name]["batch_size"]}]
        )
    ]
    # In the order they ran where every sitting is numbered; older histories are listed stage by stage.
    if all("sitting" in run for _, _, run in sittings):
        sittings.sort(key=lambda s: s[2]["sitting"])
    for name, k, run in sittings:
        flags = Hyper.flags(name, run)
        lines.append(
            f"whatif train {name} --preset {preset} --data {tr.get('data')} --out RUN --steps {run['to_step']} "
            f"--batch-size {run['batch_size']}{flags}{' --resume' if name != 'stage0' or k else ''}"
        )
    lines += ["```", ""]
    if eval_result is not None:
        s = summary(eval_result)
        lines += [
            "## Metrics",
            "",
            f"`{eval_command}` (tables and contact sheets in docs/default-model.md):",
            "",
            *(
                [f"- Edit faithfulness on {faithfulness['n']} held-out identities: {headline(faithfulness)}"]
                if faithfulness
                else []
            ),
            *[
                f"- Table 2 protocol, {eval_result['n']} identities per target: {line}"
                for line in summary_lines(eval_result)
            ],
            "",
            f"Seed optimisation changes mean AUROC by {s[True]['mean_auroc'] - s[False]['mean_auroc']:+.3f}. "
            f"Sampling: {sampling_text(eval_result)}.",
            f"Seed optimisation settings: {seed_opt_text(eval_result)}.",
            "",
        ]
    lines += [
        "## Intended use and limits",
        "",
        "- Intended: running and testing the whatif-cxr pipeline, service and web form without",
        "  real data; teaching what a counterfactual pipeline does.",
        "- Not intended: any diagnosis, triage or clinical decision; real radiographs are far from its",
        "  training data (the quality report's out-of-distribution score says so per input).",
        "- Phantom findings are simplified shapes with known masks; success here says nothing about",
        "  real pathology.",
        "",
        f"Checkpoint size: {_size_mb(checkpoint):.1f} MB.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    checkpoint: Path, config: dict, eval_result: dict | None, eval_command: str, faithfulness: dict | None = None
) -> Path:
    path = Path(checkpoint) / "MODEL_CARD.md"
    path.write_text(model_card(config, eval_result, Path(checkpoint), eval_command, faithfulness))
    return path
