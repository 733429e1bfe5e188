"""Making a run's counterfactuals on the Celery workers (`whatif augment --broker redis://...`).

Each item goes out as one task (`model.batch_item.AUGMENT_TASK`, JSON) with the source file's
bytes, so the worker makes exactly what this machine would (`model.batch_item.make_item`). At
most `window` items are in flight: the queue the workers share with the service's interactive
jobs never holds more than that of a run, and no more than that many images are held in memory.
Replies come back on one Redis list of the run's own (`worker.augment_task` explains why not a
Celery result backend) in any order, and are handed on in the run's order.

If no reply arrives for `timeout_s` while items are in flight (no worker, or none with the run's
checkpoint reachable), the run stops with an error; everything already handed on is written, and
a rerun continues from there.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

from model.batch_item import AUGMENT_TASK, MESSAGE_VERSION, REPLY_PREFIX, ItemResult

from .local import Outcome
from .plan import Item


class BrokerError(RuntimeError):
    """The workers did not answer, or the broker cannot be reached."""


def run_broker(
    items: list[Item],
    broker_url: str,
    checkpoint_digest: str,
    optimize_seed: bool,
    window: int = 8,
    timeout_s: float = 900.0,
    queue: str = "celery",
) -> Iterator[Outcome]:
    """Each item's outcome, in the order of `items`, made by the workers on `broker_url`."""
    from celery import Celery

    if window < 1:
        raise ValueError(f"--window must be at least 1, got {window}")
    app = Celery("whatif-augment", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    client = connect(broker_url, timeout_s + 10)
    reply_to = f"{REPLY_PREFIX}{uuid.uuid4().hex}"

    keys = [item.key for item in items]
    waiting = set(keys)  # not yet handed on: a reply for any other key is a redelivery's duplicate
    arrived: dict[str, Outcome] = {}
    sent = 0
    try:
        for position, key in enumerate(keys):
            while sent < len(items) and sent < position + window:
                # an item waits for at most `window` others, each answered within `timeout_s`
                _send(app, items[sent], reply_to, checkpoint_digest, optimize_seed, queue, window * timeout_s)
                sent += 1
            while key not in arrived:
                popped = client.blpop([reply_to], timeout=timeout_s)
                if popped is None:
                    raise BrokerError(
                        f"no result from the workers for {timeout_s:g} s ({sent - position} items in flight): "
                        "is a worker running (`celery -A worker.celery_app worker`) with this checkpoint? "
                        "Rerun the same command to continue"
                    )
                reply = json.loads(popped[1])
                if reply.get("key") in waiting and reply["key"] not in arrived:
                    arrived[reply["key"]] = _outcome(reply)
            waiting.discard(key)
            yield arrived.pop(key)
    finally:
        client.delete(reply_to)
        client.close()


def connect(broker_url: str, timeout_s: float = 10.0):
    """A Redis client of `broker_url` that has answered a PING; `BrokerError` when it cannot."""
    import redis

    try:
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=10, socket_timeout=timeout_s)
        client.ping()
    except (redis.RedisError, ValueError) as exc:  # ValueError: a URL redis-py cannot read
        raise BrokerError(f"--broker {_safe(broker_url)}: cannot reach Redis ({type(exc).__name__})") from None
    return client


def _send(app, item: Item, reply_to: str, digest: str, optimize_seed: bool, queue: str, expires_s: float) -> None:
    message = {
        "version": MESSAGE_VERSION,
        "key": item.key,
        "image_b64": base64.b64encode(item.source.read()).decode("ascii"),
        "target": item.target.text,
        "seed": item.seed,
        "optimize_seed": optimize_seed,
        "checkpoint_digest": digest,
        "reply_to": reply_to,
    }
    # A run that stopped leaves its queued items behind: past `expires` a worker drops them unmade.
    app.send_task(AUGMENT_TASK, args=[message], queue=queue, expires=expires_s)


def _outcome(reply: dict) -> Outcome:
    if reply.get("ok"):
        result = ItemResult.from_message(reply)
        return result.png, result.fields, None
    error = str(reply.get("error") or "failed: no reason given")
    if error.startswith("wrong checkpoint"):  # every item would fail alike: stop rather than record it
        raise BrokerError(error)
    return None, None, error


def _safe(url: str) -> str:
    """The broker URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
