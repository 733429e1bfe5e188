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


def evaluate(fold: str = "dev", refiner: Refiner | None = None, reports: list[IUReport] | None = None) -> dict:
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
                examples[label].append({"id": r.id, "error": "missed" if t else "false positive", "tags": list(r.major), "text": r.text})
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
    small = [f"{label} ({m['positives']})" for label, m in result["per_label"].items() if m["positives"] < MIN_POSITIVES]
    if small:
        lines += ["", f"Fewer than {MIN_POSITIVES} positives, counted in micro-F1 but not listed: {', '.join(small)}."]
    return "\n".join(lines)
