"""IU-Xray (Open-i, NLM CXR) reports: the XML files, their sections and curated MeSH tags.

The 3,955 reports ship inside torchxrayvision (`data/NLMCXR_reports.tgz`); the same reader
takes an extracted `ecgen-radiology/` folder of the real dataset. Held-out fold: reports whose
numeric id N (`<IUXRId id="N">`) has N % 5 == 0 (DATA.md); tune on the rest only.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class IUReport:
    id: int
    comparison: str
    indication: str
    findings: str
    impression: str
    major: tuple[str, ...]  # curated MeSH tags, e.g. "Pleural Effusion/bilateral/small"

    @property
    def fold(self) -> str:
        return "heldout" if self.id % 5 == 0 else "dev"

    @property
    def text(self) -> str:
        """FINDINGS + IMPRESSION, the part a refiner reads."""
        return " ".join(s for s in (self.findings, self.impression) if s)


def parse_report(xml_bytes: bytes) -> IUReport:
    root = ET.fromstring(xml_bytes)
    iu = root.find(".//IUXRId")
    if iu is None or not iu.get("id", "").isdigit():
        raise ValueError("not an IU-Xray report: no numeric <IUXRId id=...>")
    sections = {el.get("Label", "").upper(): (el.text or "").strip() for el in root.iter("AbstractText")}
    major = tuple((el.text or "").strip() for el in root.iter("major") if (el.text or "").strip())
    return IUReport(
        id=int(iu.get("id")),
        comparison=sections.get("COMPARISON", ""),
        indication=sections.get("INDICATION", ""),
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        major=major,
    )


def default_reports_path() -> Path:
    from training.phantom.lung_masks import data_path

    return data_path("NLMCXR_reports.tgz")


def read_reports(path: str | os.PathLike | None = None) -> Iterator[IUReport]:
    """All reports from the `.tgz` (default: the copy in torchxrayvision) or a folder of XMLs, by id."""
    path = Path(path) if path is not None else default_reports_path()
    reports = []
    if path.is_dir():
        for f in path.rglob("*.xml"):
            reports.append(parse_report(f.read_bytes()))
    else:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    reports.append(parse_report(tar.extractfile(member).read()))
    yield from sorted(reports, key=lambda r: r.id)
