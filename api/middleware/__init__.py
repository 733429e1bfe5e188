"""Pure ASGI middleware that decide about a request before any route, or any body parsing, runs.

Outermost first (`api.main.create_app` adds them in the reverse order):

1. `security_headers`: nosniff, the CSP, frame-ancestors, Referrer-Policy and Cache-Control on
   every response, the refusals below included.
2. `local_only`: in local mode (no API keys), only loopback connections with a loopback Host,
   and no cross-site unsafe request.
3. `body_limit`: the request body bounded as it arrives (413).
4. `admission`: the API key (401, failed attempts limited: 429), then for a new job its rate
   (429), the cap on unfinished jobs (429) and the blob quota (507).

They answer in the problem shape of `api/problems.py`. They are ASGI, not FastAPI dependencies,
because FastAPI parses (and spools) a multipart body before it solves a route's dependencies.
"""
