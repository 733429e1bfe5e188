"""Local mode (`WHATIF_AUTH_DISABLED`, no API keys): answered only for this machine's own browser.

Without keys, what keeps others out is where the request comes from, checked on each request
from the connection itself, never from settings (a server started with `uvicorn --host 0.0.0.0`
and these settings served everyone):

- the connection: its server address (the socket it arrived on, ASGI `scope["server"]`) and its
  client address are both loopback, else 403. A Unix socket is refused too (no address to check).
- the Host header: localhost, 127.0.0.1 or [::1], any port, else 421 (400 without one). A page
  on another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own name,
  so it can neither read results nor post.
- unsafe methods (POST, DELETE, ...): a browser's Origin must be this server's own origin and
  Sec-Fetch-Site, when sent, same-origin or none; else 403. A cross-site form post would otherwise
  create jobs as the local user. A client that sends neither (curl) is no browser and is let through.
"""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..problems import problem

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LocalOnly:
    def __init__(self, app: ASGIApp, enabled: bool):
        self.app, self.enabled = app, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        refusal = _refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


def _refusal(scope: Scope):
    server, client = scope.get("server"), scope.get("client")
    if not (server and is_loopback(server[0]) and client and is_loopback(client[0])):
        return problem(
            "not-loopback",
            "this server runs without API keys, so it answers only connections from this machine to a loopback "
            "address; to serve others, set WHATIF_API_KEYS",
        )
    headers = Headers(scope=scope)
    host = headers.get("host")
    if not host:
        return problem("host-missing", "the request has no Host header")
    name = host_name(host)
    if name not in LOOPBACK_HOSTS:
        return problem(
            "host-not-local",
            "without API keys this server answers only for Host localhost, 127.0.0.1 or [::1]; "
            "open it as http://127.0.0.1:<port>/",
        )
    method = scope.get("method", "GET")  # a WebSocket handshake has none, and is a GET
    if method not in SAFE_METHODS:
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        own = f"{scope.get('scheme', 'http')}://{host}".lower()
        if (origin is not None and origin.lower() != own) or site not in (None, "same-origin", "none"):
            return problem(
                "cross-site",
                f"a {method} from another site is refused: without API keys only this server's own pages may send one",
            )
    return None


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a name, a Unix socket's path, or nothing
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return (mapped or ip).is_loopback


def host_name(host: str) -> str:
    """The Host header's name, lower case, without its port ("[::1]" keeps its brackets);
    "" when the port is not a number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name, port = name + "]", rest.removeprefix(":") if rest.startswith(":") else rest
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return ""
    return name
