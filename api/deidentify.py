"""De-identification of uploaded DICOM before anything is decoded or stored.

deid's default DICOM recipe (the DICOM PS3.15 basic profile as deid ships it) plus this
project's additions in `api/data/deid.whatif` remove the identifying header attributes, and
private tags go too. A check afterwards fails closed: any person name, any non-empty date or
time, and any attribute whose keyword names a patient, an institution or an identifier is
removed if deid left it (deid 0.4.13 keeps IssuerOfPatientID on the real RG1 radiograph, for
example). Images that declare burned-in annotations are refused: their pixels may show the
patient's name, and only pixels are kept.

Nothing here logs attribute values; callers get counts only.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

RECIPE = Path(__file__).parent / "data" / "deid.whatif"
# Keywords that must not survive, whatever the recipe did.
_IDENTIFYING = re.compile(
    r"Patient(?!Orientation|Position)|Institution|Physician|Operator|Issuer|Accession|Station|Serial|Address|Telephone|(?:^|[a-z])ID$|IDs$|Name$"
)
_DATE_TIME_VR = {"DA", "DT", "TM"}
# Attributes the pixel decoding needs and that identify no one.
_KEEP = {
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "NumberOfFrames",
    "PixelData",
    "PlanarConfiguration",
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "ImagerPixelSpacing",
    "PixelSpacing",
    "BurnedInAnnotation",
    "VOILUTFunction",
    "PresentationLUTShape",
}


class DeidentificationError(ValueError):
    """The upload cannot be made safe to store (it declares burned-in annotations)."""


@functools.lru_cache(maxsize=1)
def _recipe():
    """Parsed once per process (not per upload)."""
    from deid.config import DeidRecipe
    from deid.logger import bot

    # deid reports through its own logger; keep it quiet so that no attribute can reach the logs.
    logging.getLogger("deid").setLevel(logging.ERROR)
    bot.level = 0
    return DeidRecipe(deid=str(RECIPE), base=True)


def deidentify(ds) -> tuple[object, int]:
    """-> (de-identified copy of the pydicom Dataset, number of attributes removed)."""
    from deid.dicom import replace_identifiers

    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationError(
            "the DICOM declares burned-in annotations, which may show patient details in the pixels; "
            "send an image without them"
        )
    before = sum(1 for _ in ds.iterall())
    clean = replace_identifiers(dicom_files=[ds], deid=_recipe(), save=False, remove_private=True)[0]
    _fail_closed(clean)
    return clean, before - sum(1 for _ in clean.iterall())


def _identifying(el) -> bool:
    kw = el.keyword or ""
    if kw in _KEEP:
        return False
    return (
        el.VR == "PN" or (el.VR in _DATE_TIME_VR and el.value not in (None, "")) or bool(kw and _IDENTIFYING.search(kw))
    )


def _fail_closed(ds) -> None:
    """Remove what identifies a person or a place if the recipe left it (in sequences too)."""

    def drop(dataset, el) -> None:
        if _identifying(el) or el.tag.is_private:
            del dataset[el.tag]

    ds.walk(drop)  # walk() allows deleting the element it is visiting


def remaining_identifiers(ds) -> list[str]:
    """Keywords (tags, for private ones) of attributes that would identify someone; empty once clean."""
    return [el.keyword or str(el.tag) for el in ds.iterall() if _identifying(el) or el.tag.is_private]
