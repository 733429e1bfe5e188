"""Score report refinement against the curated MeSH tags of the real IU-Xray reports.

Ground truth per report: the labels its `<major>` tags map to (`data/iu_xray_mesh_map.json`),
with side and severity where a tag names them. Prediction: the refiner on FINDINGS +
IMPRESSION; a label counts as predicted when its status is "present" (uncertain mentions are
not counted: on the dev fold counting them lowered micro-F1). Reports tagged "No Indexing" have
no ground truth and are skipped.

Reported: per-label precision, recall and F1 (labels with at least 20 positives in the fold),
micro-F1 over the 13 findings (No Finding is derived, not extracted, and shown apart), side
accuracy (right / left / bilateral) and severity accuracy (ordinal: mild|small, moderate,
large|severe) over true positives whose tags name them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter, defaultdict
from importlib import resources

from model.labels import CHEXPERT_LABELS, NO_FINDING
from model.refine import Refiner
from model.refine.schema import SEVERITY_ORDINAL

from .iu_xray import IUReport, read_reports

MIN_POSITIVES = 20
POSITIVE_STATUS = ("present",)
FINDINGS13 = tuple(label for label in CHEXPERT_LABELS if label != NO_FINDING)


def load_mesh_map() -> dict:
    return json.loads(resources.files("training").joinpath("data/iu_xray_mesh_map.json").read_text())


@dataclasses.dataclass
class Truth:
    labels: set[str]
    side: dict[str, str]
    severity: dict[str, int]


def tag_truth(major: tuple[str, ...], mesh: dict) -> Truth | None:
    if any(tag.split("/")[0] in mesh["skip_reports_with"] for tag in major):
        return None
    labels: set[str] = set()
    sides: dict[str, set[str]] = defaultdict(set)
    severity: dict[str, int] = {}
    for tag in major:
        head, *terms = [t.strip() for t in tag.split("/")]
        terms_set = set(terms)
        for rule in mesh["rules"]:
            if rule["head"] != head:
                continue
            if "any" in rule and not terms_set & set(rule["any"]):
                continue
            if "none" in rule and terms_set & set(rule["none"]):
                continue
            label = rule["label"]
            labels.add(label)
            sides[label] |= terms_set & set(mesh["sides"])
            sev = [mesh["severity"][t] for t in terms if t in mesh["severity"]]
            if sev:
                severity[label] = max(sev + [severity.get(label, 0)])
            break
    side = {}
    for label, s in sides.items():
        if s:
            side[label] = "bilateral" if ("bilateral" in s or {"right", "left"} <= s) else s.pop()
    return Truth(labels, side, severity)


class KeywordBaseline:
    """The yardstick of the issue: the same lexicon, negation by "no/not/without" anywhere in the
    sentence, side and severity from any such word in the sentence. Not used by the product."""

    def __call__(self, text: str):
        from model.refine.lexicon import FINDING_REGEX, SEVERITY_WORDS, SIDE_WORDS
        from model.refine.rules import normalise, sentences
        from model.refine.schema import Refinement, StructuredFinding

        found: dict[str, StructuredFinding] = {}
        for sentence in sentences(normalise(text)):
            negated = re.search(r"\b(?:no|not|without)\b", sentence)
            for label, regex in FINDING_REGEX.items():
                if not regex.search(sentence) or label in found:
                    continue
                sides = {name for rx, name in SIDE_WORDS if rx.search(sentence)}
                side = "bilateral" if "bilateral" in sides or {"right", "left"} <= sides else next(iter(sides), None)
                severity = next((name for rx, name in SEVERITY_WORDS if rx.search(sentence)), None)
                status = "absent" if negated else "present"
                found[label] = StructuredFinding(label=label, status=status, side=side, severity=severity)
        findings = [found[label] for label in CHEXPERT_LABELS if label in found]
        return Refinement(findings=findings, condition="", backend="keyword-baseline")


def evaluate(fold: str = "dev", refiner=None, reports: list[IUReport] | None = None) -> dict:
    refiner = refiner or Refiner()
    mesh = load_mesh_map()
    reports = reports if reports is not None else list(read_reports())
    tp, fp, fn = Counter(), Counter(), Counter()
    side_ok = side_n = sev_ok = sev_n = 0
    examples: dict[str, list[dict]] = defaultdict(list)
    n = 0
    t0 = time.perf_counter()
    for r in reports:
        if r.fold != fold or not r.text.strip():
            continue
        truth = tag_truth(r.major, mesh)
        if truth is None:
            continue
        n += 1
        result = refiner(r.text)
        present = {f.label: f for f in result.findings if f.status in POSITIVE_STATUS}
        for label in CHEXPERT_LABELS:
            t, p = label in truth.labels, label in present
            if t and p:
                tp[label] += 1
            elif p:
                fp[label] += 1
            elif t:
                fn[label] += 1
            if t != p and len(examples[label]) < 3 and label != NO_FINDING:
                examples[label].append(
                    {"id": r.id, "error": "missed" if t else "false positive", "tags": list(r.major), "text": r.text}
                )
            if t and p and label in truth.side:
                side_n += 1
                side_ok += present[label].side == truth.side[label]
            if t and p and label in truth.severity:
                sev_n += 1
                got = present[label].severity
                sev_ok += got is not None and SEVERITY_ORDINAL[got] == truth.severity[label]
    seconds = time.perf_counter() - t0
    per_label = {}
    for label in CHEXPERT_LABELS:
        pos = tp[label] + fn[label]
        prec = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
        rec = tp[label] / pos if pos else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[label] = {"positives": pos, "precision": prec, "recall": rec, "f1": f1}
    stp = sum(tp[label] for label in FINDINGS13)
    sfp = sum(fp[label] for label in FINDINGS13)
    sfn = sum(fn[label] for label in FINDINGS13)
    micro = 2 * stp / (2 * stp + sfp + sfn) if stp else 0.0
    return {
        "fold": fold,
        "reports": n,
        "per_label": per_label,
        "micro_f1": micro,
        "side_accuracy": side_ok / side_n if side_n else float("nan"),
        "side_n": side_n,
        "severity_accuracy": sev_ok / sev_n if sev_n else float("nan"),
        "severity_n": sev_n,
        "reports_per_minute": n / seconds * 60 if seconds else float("inf"),
        "examples": dict(examples),
    }


def table(result: dict) -> str:
    lines = [
        f"Fold **{result['fold']}**: {result['reports']} reports. "
        f"Micro-F1 (13 findings) **{result['micro_f1']:.3f}**, "
        f"side accuracy **{result['side_accuracy']:.3f}** (n={result['side_n']}), "
        f"severity accuracy **{result['severity_accuracy']:.3f}** (n={result['severity_n']}).",
        "",
        "| label | positives | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, m in result["per_label"].items():
        if m["positives"] >= MIN_POSITIVES:
            lines.append(f"| {label} | {m['positives']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    small = [
        f"{label} ({m['positives']})" for label, m in result["per_label"].items() if m["positives"] < MIN_POSITIVES
    ]
    if small:
        lines += ["", f"Fewer than {MIN_POSITIVES} positives, counted in micro-F1 but not listed: {', '.join(small)}."]
    return "\n".join(lines)


def markdown(dev: dict, heldout: dict, baseline: dict | None = None) -> str:
    """docs/refinement.md: both folds, the method, the mapping and error examples from dev only."""
    mesh = load_mesh_map()
    unmapped = "\n".join(f"- {tags}: {why}" for tags, why in mesh["deliberately_unmapped"].items())
    examples = []
    for label, items in sorted(dev["examples"].items()):
        for e in items[:1]:
            examples.append(
                f"- **{label}** ({e['error']}, report {e['id']}; tags {', '.join(e['tags']) or 'none'}): "
                f'"{e["text"][:220]}{"..." if len(e["text"]) > 220 else ""}"'
            )
    return f"""# Report refinement on real IU-Xray reports

Generated by `whatif refine --eval-iu-xray --docs docs/refinement.md` (default rule backend,
offline and deterministic). Do not edit by hand.

Ground truth: the curated MeSH `<major>` tags of the 3,955 IU-Xray (Open-i) reports shipped in
torchxrayvision, mapped to CheXpert labels, side and severity by
`training/data/iu_xray_mesh_map.json`. The refiner reads FINDINGS + IMPRESSION; a label counts as
predicted when its status is `present` (hedged mentions are `uncertain` and not counted).
Reports tagged "No Indexing" or with no FINDINGS/IMPRESSION text are skipped. The rules were tuned
on the dev fold only; the held-out fold is the reports with id % 5 == 0.

Targets on the held-out fold: micro-F1 >= 0.93, side accuracy >= 0.92, severity accuracy >= 0.85.

## Held-out fold

{table(heldout)}

{_baseline_line(baseline)}

## Dev fold (used for tuning)

{table(dev)}

Speed: {dev["reports_per_minute"]:,.0f} reports a minute on one core (dev fold run).

"No Finding" is derived (no pathology present or uncertain), not extracted, and IU-Xray's
`normal` tag is stricter than CheXpert's No Finding (it excludes granulomas, scoliosis, emphysema
and other non-CheXpert findings), so it is listed but not part of micro-F1.

## Tags deliberately left unmapped

{unmapped}

## Remaining errors, one example per label (dev fold)

{chr(10).join(examples)}
"""


def _baseline_line(baseline: dict | None) -> str:
    if baseline is None:
        return ""
    return (
        f"For scale, a keyword matcher with the same lexicon and a naive same-sentence negation rule "
        f"(`KeywordBaseline`) on the same held-out fold: micro-F1 {baseline['micro_f1']:.3f}, side accuracy "
        f"{baseline['side_accuracy']:.3f}, severity accuracy {baseline['severity_accuracy']:.3f}."
    )
