"""The default refiner backend: lexicon matches with NegEx-style negation and uncertainty scope.

Why rules of our own rather than negspacy/medspacy: both need a spaCy pipeline and their
trigger lists are general clinical ones; on radiology reports the scope rules that matter
("no effusion, pneumothorax or consolidation" negates all three; "but", "with", "there is"
close the scope; "cannot be excluded" after the finding makes it uncertain) are a few lines
here, run thousands of reports a second with no model download, and are tuned on the
IU-Xray dev fold. The result is deterministic: same text, same output.

Per mention: status from the nearest trigger in the clause before it (within
`SCOPE_WORDS` words, not across a termination term) or a post-trigger right after it;
side, zones and severity from the words of its own phrase. Per label: present beats
uncertain beats absent; sides of present mentions combine (right + left = bilateral).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model.labels import CHEXPERT_LABELS, NO_FINDING, SUPPORT_DEVICES

from .lexicon import (
    FINDING_REGEX,
    IMPLICIT_BILATERAL,
    NORMAL_REGEX,
    POST_NEGATION,
    POST_NEGATION_FAR,
    POST_UNCERTAIN,
    PRE_NEGATION,
    PRE_UNCERTAIN,
    PSEUDO_NEGATION,
    SEVERITY_WORDS,
    SIDE_WORDS,
    TERMINATION,
    ZONE_BEFORE_FINDING,
    ZONE_WORDS,
)
from .schema import SEVERITY_ORDINAL, StructuredFinding

SCOPE_WORDS = 14  # how far back a pre-trigger reaches (NegEx uses 5; radiology negation lists are long: dev-tuned)
_SENTENCE = re.compile(r"(?<!\d)[.;!?]+(?!\d)|\n+")
_PATHOLOGIES = tuple(label for label in CHEXPERT_LABELS if label not in (NO_FINDING, SUPPORT_DEVICES))
_NO_LOCATION = ("Cardiomegaly", "Enlarged Cardiomediastinum")  # whole-heart / mediastinal findings
_RANK = {"present": 2, "uncertain": 1, "absent": 0}


@dataclass
class Mention:
    label: str
    start: int
    end: int
    status: str
    side: str | None
    zones: tuple[str, ...]
    severity: str | None


def normalise(text: str) -> str:
    text = text.lower().replace("x-xxxx", "x-ray")
    text = re.sub(r"[ \t]+", " ", text)
    return PSEUDO_NEGATION.sub("unchanged", text)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def _words(s: str) -> int:
    return len(s.split())


def _status(sentence: str, start: int, end: int) -> str:
    before = sentence[:start]
    cut = 0
    for t in TERMINATION.finditer(before):
        cut = t.end()
    best, best_pos = None, -1
    for regex, status in ((PRE_NEGATION, "absent"), (PRE_UNCERTAIN, "uncertain")):
        # Searched in the whole sentence so that a trigger may look ahead ("clear airspace
        # disease"), kept only when it ends before the mention.
        for m in regex.finditer(sentence, cut):
            if m.end() > start:
                break
            if _words(before[m.end() :]) <= SCOPE_WORDS and m.start() >= best_pos:
                # The nearer trigger wins; at the same place uncertainty wins ("can not exclude").
                if m.start() > best_pos or status == "uncertain":
                    best, best_pos = status, m.start()
    after = sentence[end : end + 60]
    if POST_UNCERTAIN.search(after):
        return "uncertain"
    if POST_NEGATION.search(after) or POST_NEGATION_FAR.search(after):
        return "absent"
    return best or "present"


def _attributes(sentence: str, start: int, end: int, prev_end: int, next_start: int):
    left_lo = max(prev_end, start - 60)
    for m in re.finditer(r"[,:]", sentence[left_lo:start]):
        left_lo = max(left_lo, left_lo + m.end())
    left = sentence[left_lo:start]
    span = sentence[start:end]
    right = sentence[end:next_start][:60]
    # The phrase ends at a comma or a conjunction, except in "right and left ...".
    stop = re.search(r"[,:]|(?<!right)(?<!left) and | with | but | which ", right)
    if stop:
        right = right[: stop.start()]

    def sides(s: str) -> set[str]:
        return {name for regex, name in SIDE_WORDS if regex.search(s)}

    found = sides(left) or sides(span) or sides(right)
    if not found:
        # "right pleural effusion with adjacent atelectasis": a finding named without a side
        # takes the side of its clause, across the finding named before it.
        clause_lo = max((m.end() for m in re.finditer(r"[,:]", sentence[:start])), default=0)
        found = sides(sentence[clause_lo:start]) or sides(sentence)
    if not found and IMPLICIT_BILATERAL.search(left + span + right):
        found = {"bilateral"}
    if "bilateral" in found or {"right", "left"} <= found:
        side = "bilateral"
    else:
        side = next(iter(found), None)
    zones = tuple(name for regex, name in ZONE_WORDS if regex.search(left) or regex.search(span) or regex.search(right))
    adjacent = ZONE_BEFORE_FINDING.search(left)
    if adjacent:
        zone = "middle" if adjacent.group(1) == "mid" else adjacent.group(1)
        zones = tuple(name for _, name in ZONE_WORDS if name in (*zones, zone))  # ZONE_WORDS' order
    severity = None
    for part in (span, left, right):
        hits = [(m.start(), name) for regex, name in SEVERITY_WORDS for m in regex.finditer(part)]
        if hits:
            # In the left window the word nearest the finding counts ("small left ... effusion").
            severity = (max(hits) if part is left else min(hits))[1]
            break
    return side, zones, severity


def find_mentions(text: str) -> list[Mention]:
    out: list[Mention] = []
    for sentence in sentences(normalise(text)):
        spans = sorted(
            (m.start(), m.end(), label) for label, regex in FINDING_REGEX.items() for m in regex.finditer(sentence)
        )
        for i, (start, end, label) in enumerate(spans):
            prev_end = max((e for s, e, _ in spans[:i] if e <= start), default=0)
            next_start = min((s for s, _, _ in spans[i + 1 :] if s >= end), default=len(sentence))
            side, zones, severity = _attributes(sentence, start, end, prev_end, next_start)
            if severity is None and len(spans) == 1:
                # "left upper lobe pneumonia, moderate": one finding, its severity anywhere in the sentence.
                severity = next((name for regex, name in SEVERITY_WORDS if regex.search(sentence)), None)
            if label in _NO_LOCATION:
                side, zones = None, ()
            out.append(Mention(label, start, end, _status(sentence, start, end), side, zones, severity))
    return out


def refine_findings(text: str) -> tuple[list[StructuredFinding], bool]:
    """Structured findings in CheXpert order, and whether the text says anything we understood."""
    by_label: dict[str, list[Mention]] = {}
    for m in find_mentions(text):
        by_label.setdefault(m.label, []).append(m)
    findings = []
    for label in CHEXPERT_LABELS:
        mentions = by_label.get(label)
        if not mentions:
            continue
        status = max((m.status for m in mentions), key=_RANK.__getitem__)
        chosen = [m for m in mentions if m.status == status]
        side = _combine_sides([m.side for m in chosen])
        zones = tuple(dict.fromkeys(z for m in chosen for z in m.zones))
        severities = [m.severity for m in chosen if m.severity]
        severity = max(severities, key=SEVERITY_ORDINAL.__getitem__) if severities else None
        if status == "absent":
            side, zones, severity = None, (), None
        findings.append(StructuredFinding(label=label, status=status, side=side, zones=zones, severity=severity))
    normal_said = bool(NORMAL_REGEX.search(normalise(text)))
    if not any(f.status in ("present", "uncertain") for f in findings if f.label in _PATHOLOGIES):
        findings.insert(0, StructuredFinding(label=NO_FINDING, status="present"))
    return findings, bool(by_label) or normal_said


def _combine_sides(sides: list[str | None]) -> str | None:
    known = {s for s in sides if s}
    if not known:
        return None
    if "bilateral" in known or {"right", "left"} <= known:
        return "bilateral"
    return known.pop()
