"""The `whatif augment --broker` task: one counterfactual of a batch run, made on a worker.

The message is JSON: the source image's file bytes (base64), the target, the seed, whether to
optimise it, the digest of the checkpoint the run expects, and `reply_to`, a Redis list. The
result goes back on that list (`model.batch_item.ItemResult.to_message`, or an error), not through
a Celery result backend: the service's app has none (worker/celery_app.py says why), and the client
collects a run's results from one list with a blocking pop.

A worker whose checkpoint is not the run's answers with an error rather than a result from another
model: a run's counterfactuals all come from the checkpoint its manifest names.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging

from model.batch_item import AUGMENT_TASK, MESSAGE_VERSION, REPLY_PREFIX

from .runtime import autocast, pipeline

__all__ = ["AUGMENT_TASK", "augment_item"]
REPLY_TTL_S = 24 * 3600  # a reply nobody collects (the client stopped) expires
log = logging.getLogger(__name__)


def augment_item(s, message: dict, redis_client=None) -> None:
    """Make the item of `message` with this worker's model and push the outcome to its reply list."""
    reply_to = message.get("reply_to", "")
    if not (isinstance(reply_to, str) and reply_to.startswith(REPLY_PREFIX)):
        log.warning("augment item without a valid reply list: dropped")
        return
    reply = {"key": message.get("key")}
    try:
        reply.update(_outcome(s, message))
    except Exception as exc:  # noqa: BLE001 - the client must hear of every failure, or it waits for nothing
        log.exception("augment item failed")
        reply.update(ok=False, error=f"failed: {type(exc).__name__} on the worker")
    client = redis_client or _redis(s.broker_url)
    client.rpush(reply_to, json.dumps(reply))
    client.expire(reply_to, REPLY_TTL_S)


def _outcome(s, message: dict) -> dict:
    from model.batch_item import item_error, make_item

    if message.get("version") != MESSAGE_VERSION:
        return {
            "ok": False,
            "error": f"failed: message version {message.get('version')!r}, worker reads {MESSAGE_VERSION}",
        }
    try:
        data = base64.b64decode(message["image_b64"], validate=True)
        target, seed, optimize = str(message["target"]), int(message["seed"]), bool(message["optimize_seed"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return {"ok": False, "error": "failed: malformed augment message"}
    model = pipeline(s.checkpoint, s.device, s.precision)
    if message.get("checkpoint_digest") != model.digest:
        return {
            "ok": False,
            "error": f"wrong checkpoint: this worker runs {model.digest}, the run asked for "
            f"{message.get('checkpoint_digest')}",
        }
    try:
        with autocast(s.device, s.precision):
            result = make_item(model, data, target, seed, optimize)
    except Exception as exc:
        error = item_error(exc)
        if error is None:
            raise
        return {"ok": False, "error": error}
    return {"ok": True, **result.to_message()}


@functools.lru_cache(maxsize=4)
def _redis(url: str):
    """One client (and its connection pool) per broker for the worker's life, not one per item."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
