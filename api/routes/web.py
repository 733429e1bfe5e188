"""GET /: the clinician's web form (plain HTML and a little JavaScript, no build step)."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def form() -> str:
    return resources.files("api").joinpath("static/index.html").read_text()
