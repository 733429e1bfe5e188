"""GET /: the clinician's web form (plain HTML and a little JavaScript, no build step).

Its script and style are inline, in the one file; the Content-Security-Policy allows exactly
them, by their SHA-256 (`FORM_HASHES`), and no other inline script.
"""

import base64
import hashlib
import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

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
