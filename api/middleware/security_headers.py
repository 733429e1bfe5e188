"""Security headers on every response, the service's refusals and errors included.

- `Content-Security-Policy`: scripts, styles, images and fetches from this origin only, and of
  inline ones only the web form's own script and style, by their SHA-256 (`api/routes/web.py`);
  images also as blob: URLs (the form shows fetched results so); no plugins, no <base>, forms
  posted only here, and `frame-ancestors 'none'`: no other page may frame the form
  (clickjacking). `X-Frame-Options: DENY` says the same to older browsers.
- `X-Content-Type-Options: nosniff`: a result or an error is never run as a script or a page.
- `Referrer-Policy: no-referrer`: job URLs (their ids) never leave in a Referer.
- `Cache-Control: no-store` on every response, which includes the job resources (`/jobs/...`,
  results derived from a patient's image): no browser or proxy keeps a copy.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def headers(inline: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The headers, the CSP allowing the inline scripts and styles whose hashes `inline` gives
    ({"script-src": ("'sha256-...'",), "style-src": (...)})."""
    script, style = " ".join(inline.get("script-src", ())), " ".join(inline.get("style-src", ()))
    csp = (
        f"default-src 'none'; script-src 'self' {script}; style-src 'self' {style}; img-src 'self' blob:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def apply(target: MutableHeaders, values: dict[str, str]) -> None:
    """Set the security headers, replacing any a route set (none sets weaker ones on purpose)."""
    for name, value in values.items():
        target[name] = value


class SecurityHeaders:
    def __init__(self, app: ASGIApp, values: dict[str, str]):
        self.app, self.values = app, values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                apply(MutableHeaders(scope=message), self.values)
            await send(message)

        await self.app(scope, receive, send_with_headers)
