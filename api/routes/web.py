"""GET /: the clinician's web form (plain HTML and a little JavaScript, no build step), and
POST /preview: what the form shows of a file a browser cannot show itself (a DICOM).

The form's script and style are inline, in the one file; the Content-Security-Policy allows
exactly them, by their SHA-256 (`FORM_HASHES`), and no other inline script.

The preview is the input as a job would store it (`input.png`): the upload decoded on the decode
pool by `api.ingest.decode_upload`, with the same limits, after the same de-identification, at
the same size. So a clinician sees before submitting the pixels the model will be given (the
windowing, a MONOCHROME1 inverted), not a browser's guess, and draws the edit region on them in
their own pixels. Nothing of it is stored: the answer is made from the request and forgotten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import zlib
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, File, Request, Response, UploadFile
from fastapi.responses import HTMLResponse

from ..core.config import Settings
from ..decoding import decode_on_pool
from ..deps import Caller, SettingsDep
from ..ingest import decode_upload
from ..problems import KEYED, responses

router = APIRouter()
FORM = resources.files("api").joinpath("static/index.html").read_text()


def _hashes(tag: str) -> tuple[str, ...]:
    # A CSP hash is over the element's text exactly as written, between the tags.
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", FORM, flags=re.DOTALL)
    return tuple(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


FORM_HASHES = {"script-src": _hashes("script"), "style-src": _hashes("style")}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def form() -> str:
    return FORM


# Said in the PNG itself and in a header: a saved preview is not mistaken for a result, nor for
# the original file.
PREVIEW_NOTICE = (
    "PREVIEW of the input as whatif-cxr decodes and de-identifies it; not stored; not a result, not SYNTHETIC"
)
# An upload refused as POST /counterfactual refuses it (api/decoding.py), with the same statuses.
_PREVIEW_RESPONSES = responses(
    *KEYED,
    "bad-request",
    "cross-site",
    "preview-rate-limited",
    "decoder-busy",
    "upload-too-large",
    "unsupported-media-type",
    "invalid-request",
)
_PREVIEW_RESPONSES[200] = {
    "description": "the decoded, de-identified pixels as a job would store them (a grey PNG, 16-bit for a DICOM, "
    "at the image's own size), with a text chunk saying it is a preview; nothing is stored",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        "X-Whatif-Preview": {"description": PREVIEW_NOTICE, "schema": {"type": "string"}},
        "X-Whatif-Source-Format": {"description": "dicom, png or jpeg", "schema": {"type": "string"}},
        "X-Whatif-Notes": {
            "description": "what decoding did (de-identification, windowing, inversion): a JSON list of "
            "sentences, ASCII",
            "schema": {"type": "string"},
        },
    },
}


@router.post("/preview", response_class=Response, responses=_PREVIEW_RESPONSES)
async def preview(
    request: Request,
    _owner: Caller,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="PNG, JPEG or DICOM radiograph, as for POST /counterfactual")],
):
    # One byte past the limit is enough to refuse it (decode_upload's 413): the rest is never read.
    data = await image.read(settings.max_upload_bytes + 1)
    png, notes, fmt = await decode_on_pool(request, preview_png, data, settings)
    return Response(
        png,
        media_type="image/png",
        headers={
            # The security headers set no-store on every answer; said here too, since this one is a
            # patient's image and must stay so whatever the middleware becomes.
            "Cache-Control": "no-store",
            "Content-Disposition": 'inline; filename="preview.png"',
            "X-Whatif-Preview": PREVIEW_NOTICE,
            "X-Whatif-Source-Format": fmt,
            "X-Whatif-Notes": json.dumps(notes, ensure_ascii=True),
        },
    )


def preview_png(data: bytes, settings: Settings) -> tuple[bytes, list[str], str]:
    """-> (the PNG a job would store as input.png, marked a preview; notes; source format). Runs on
    the decode pool, as a job's decode does."""
    png, notes, fmt = decode_upload(data, settings.max_upload_bytes, settings.max_pixels, settings.max_inflated_bytes)
    return _with_text(png, "Comment", PREVIEW_NOTICE), notes, fmt


def _with_text(png: bytes, keyword: str, text: str) -> bytes:
    """`png` with a tEXt chunk after its IHDR: the pixels' bytes are not touched (no re-encoding of a
    16-bit image, which would take longer than the decode)."""
    body = keyword.encode("latin-1") + b"\0" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    after_ihdr = 8 + 4 + 4 + 13 + 4  # the signature, then IHDR: length, type, 13 bytes of data, CRC
    return png[:after_ihdr] + chunk + png[after_ihdr:]
