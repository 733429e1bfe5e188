"""The bounded pool that decodes uploads, off the event loop: in child processes by default.

Decoding a large PNG, JPEG or DICOM takes seconds of CPU; inside the async handler it stalls
every other request (`/healthz`, job polls, other uploads) for as long. Here at most `workers`
uploads decode at once and up to `queue` more wait, briefly (a decode takes seconds); past that
an upload is refused at once (`DecodePoolBusy`: 503 with Retry-After) rather than queued without
bound, since each waiting upload holds its bytes in memory and each running one can take
hundreds of MB.

Threads are not enough: a codec that holds the GIL while it decodes (OpenJPEG through
pylibjpeg-openjpeg: 0.6-0.8 s for the RG1 radiograph) stalls the event loop from its thread, and
one that crashes (a segfault in C on a hostile frame) takes the API process with it. In
`processes` mode each decode runs in a child process (spawned, never forked from a process with
threads): the event loop keeps answering, and a crash costs the uploads then decoding a refusal
(`DecodeCrashed`) while the pool starts afresh. Arguments and results cross to the children with
the standard library's own serialisation; they are the upload's bytes and what our decoder made
of them, never data a client serialised. `threads` mode (`WHATIF_DECODE_ISOLATION=thread`)
decodes in this process, for tests and debugging.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")
# A child decodes this many uploads, then a fresh one takes over: what a decoder leaks stays bounded.
TASKS_PER_CHILD = 64
# How long each decoder is held at start-up (`DecodePool.start`): longer than a spawned process takes
# to take its next call, so that every decoder is started rather than one reused.
STARTUP_HOLD_S = 0.2


class DecodePoolBusy(Exception):
    """Every decoder is busy and the queue is full."""


class DecodeCrashed(Exception):
    """The decode process stopped (a crash in a codec) while this upload was decoding."""


class DecodePool:
    def __init__(self, workers: int, queue: int, processes: bool = True, warm: tuple[str, ...] = ()):
        """`warm`: modules a decode process imports when it starts (the decode functions' own), so
        that its first upload does not wait for them."""
        self._workers, self._processes, self._warm = workers, processes, warm
        self._limit = workers + queue
        self._in_flight = 0
        # The count drops in a future's done-callback, on another thread.
        self._lock = threading.Lock()
        self._executor: Executor | None = self._start()

    def _start(self) -> Executor:
        if not self._processes:
            return ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="whatif-decode")
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm,
            initargs=(self._warm,),
            max_tasks_per_child=TASKS_PER_CHILD,
        )

    async def start(self) -> None:
        """Start every decode process now (the app's start-up): otherwise the first uploads each wait
        for a process to spawn and import the decoders, seconds on a busy CPU, while the uploads
        behind them fill the queue and are refused (measured: experiments 50). One short call per
        decoder, each holding its decoder a moment so that the next one cannot reuse it."""
        if not self._processes:
            return
        with self._lock:
            if self._executor is None:
                self._executor = self._start()
            executor = self._executor
        futures = [executor.submit(_hold, STARTUP_HOLD_S) for _ in range(self._workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    @property
    def in_flight(self) -> int:
        """Uploads decoding or waiting for a decoder."""
        return self._in_flight

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on a decoder; `fn` a module-level function (it crosses to a child process by
        name). Raises `DecodePoolBusy` at once if the queue is full, `DecodeCrashed` if the decoder
        process died meanwhile."""
        with self._lock:
            if self._in_flight >= self._limit:
                raise DecodePoolBusy
            self._in_flight += 1
            if self._executor is None:  # closed with its app's lifespan, and the app served again
                self._executor = self._start()
            executor = self._executor
        try:
            future = executor.submit(fn, *args)
        except BrokenProcessPool:
            self._done(None)
            self._restart(executor)
            raise DecodeCrashed from None
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        try:
            # A client that goes away cancels a waiting decode; a running one finishes, holding its slot.
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(executor)
            raise DecodeCrashed from None

    def _restart(self, broken: Executor) -> None:
        """A fresh pool in place of `broken`, once, whichever of its uploads notices first."""
        with self._lock:
            if self._executor is broken:
                self._executor = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """End the decoders (the app's shutdown); a later upload starts them again."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _done(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1


def _hold(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _warm(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)
