"""The server's access log without query strings: a request line names the path, never `?...`.

uvicorn logs each request as `client - "METHOD /path?query HTTP/1.1" status` on the
`uvicorn.access` logger. The service takes nothing in a query string, but a client can send one,
and what it carries (a token, a name, a patient's text) would stay in the log. The paths are the
service's own (routes and job ids), so they are logged; the query is cut from every request line.

`install()` puts `DropQueryStrings` on the logger: `create_app` calls it, so it holds however the
app is served (`uvicorn --factory api.main:create_app`, `whatif serve`). A filter on the logger
stays when uvicorn (re)configures logging (`logging.config.dictConfig` replaces a logger's
handlers, never its filters).
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
_QUERY = re.compile(r"\?[^\s\"]*")  # from `?` to the end of the request target


class DropQueryStrings(logging.Filter):
    """Cuts `?...` from a record's arguments (uvicorn's request target is one) and, for a record
    logged already formatted, from its message. Keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) else a for a in record.args)
        elif not record.args and isinstance(record.msg, str):
            record.msg = _QUERY.sub("", record.msg)
        return True


def install(logger_name: str = ACCESS_LOGGER) -> None:
    """Put the filter on the access logger once, however often the app is made."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropQueryStrings) for f in logger.filters):
        logger.addFilter(DropQueryStrings())
