"""One counterfactual of a batch run (`whatif augment`): an input file's bytes, a target and a seed
in; the result as a synthetic PNG and the fields of its manifest line out.

The local run and the worker fleet both call `make_item` on the same bytes (the worker receives the
file, not decoded pixels), so a result does not depend on where it was made. On the wire it is JSON
(`ItemResult.to_message` / `from_message`): never pickle.
"""

from __future__ import annotations

import base64
import dataclasses
import time

from .preprocess import ImageInputError, load_image_file
from .synthetic_png import input_pixels, is_sixteen_bit, result_pixels, synthetic_png

# The `whatif augment --broker` wire contract, shared by the client (training.longtail.broker) and
# the worker (worker.augment_task): the task's name, its message's version, the reply lists' prefix.
AUGMENT_TASK = "whatif.augment_item"
MESSAGE_VERSION = 1
REPLY_PREFIX = "whatif:augment:"


@dataclasses.dataclass
class ItemResult:
    png: bytes  # the counterfactual at the input's size and depth, marked synthetic
    fields: dict  # condition, seed, seed_optimized, verdict, region_pixels, width, height, bits, notes, seconds

    def to_message(self) -> dict:
        return {"png_b64": base64.b64encode(self.png).decode("ascii"), "fields": self.fields}

    @classmethod
    def from_message(cls, message: dict) -> ItemResult:
        return cls(base64.b64decode(message["png_b64"], validate=True), dict(message["fields"]))


def item_error(exc: BaseException) -> str | None:
    """The manifest's error for an item that cannot be made from its input, whatever runs it: an
    unreadable image, a target without a finding, another input the pipeline refuses (a
    ValueError). None for anything else (a bug, the machine): that stops a local run, and a
    worker reports it as "failed: ...", which a rerun makes again."""
    from .refine import NoFindingRecognised

    if isinstance(exc, ImageInputError):
        return f"unreadable image: {exc}"
    if isinstance(exc, NoFindingRecognised):
        return f"target not understood: {exc}"
    if isinstance(exc, ValueError):
        return f"cannot make: {exc}"
    return None


def make_item(pipe, data: bytes, target: str, seed: int, optimize_seed: bool = True) -> ItemResult:
    """The counterfactual of the image file `data` (PNG, JPEG or DICOM) with `target`.

    Raises `model.preprocess.ImageInputError` for an unreadable image and
    `model.refine.NoFindingRecognised` for a target without a finding: the caller records the item
    as failed with that reason and goes on."""
    started = time.perf_counter()
    loaded = load_image_file(data)
    out = pipe(loaded.pixels, target, seed=seed, optimize_seed=optimize_seed)
    sixteen_bit = is_sixteen_bit(data, loaded.source_format)
    pixels = result_pixels(out, sixteen_bit)
    verdict = out.verdict.to_dict()
    h, w = pixels.shape
    fields = {
        "condition": out.condition,
        "seed": out.seed,
        "seed_optimized": out.seed_optimized,
        "verdict": verdict,
        "region_pixels": int(out.region.sum()),
        # pixels that differ from the input's own: 0 when the verdict passed on an unchanged image (the
        # judge already saw the finding in the input), which an augmented dataset must not keep
        "changed_pixels": int((pixels != input_pixels(out, sixteen_bit)).sum()),
        "width": w,
        "height": h,
        "bits": pixels.dtype.itemsize * 8,
        "notes": loaded.notes + out.quality.notes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ItemResult(synthetic_png(pixels, out.condition, out.seed, verdict), fields)
