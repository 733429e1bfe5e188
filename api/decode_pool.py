"""The bounded pool of threads that decodes uploads, off the event loop.

Decoding a large PNG, JPEG or DICOM takes seconds of CPU; inside the async handler it stalls
every other request (`/healthz`, job polls, other uploads) for as long. Here at most `threads`
uploads decode at once and up to `queue` more wait for a thread, briefly (a decode takes
seconds); past that an upload is refused at once (`DecodePoolBusy`: 503 with Retry-After)
rather than queued without bound, since each waiting upload holds its bytes in memory and
each running one can take hundreds of MB.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DecodePoolBusy(Exception):
    """Every decode thread is busy and the queue is full."""


class DecodePool:
    def __init__(self, threads: int, queue: int):
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="whatif-decode")
        self._limit = threads + queue
        self._in_flight = 0
        # The count drops in a future's done-callback, on a decode thread.
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Uploads decoding or waiting for a thread."""
        return self._in_flight

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on a decode thread; raises `DecodePoolBusy` at once if the queue is full."""
        with self._lock:
            if self._in_flight >= self._limit:
                raise DecodePoolBusy
            self._in_flight += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        # A client that goes away cancels a waiting decode; a running one finishes, holding its slot.
        return await asyncio.wrap_future(future)

    def _done(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1
