"""`whatif serve`: the API, the web form and a worker in one process; no Redis, no GPU needed."""

from __future__ import annotations

import sys

from whatif.errors import UsageError


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="single-machine mode: API + web form + in-process worker")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: authentication off)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    s.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    from api.main import create_app
    from model.pipeline import default_checkpoint_dir
    from training.phantom.cache import cache_dir
    from worker.celery_app import make_celery
    from worker.embedded import start_embedded_worker

    _settings(args, args.checkpoint)  # refuse bad settings before building anything
    checkpoint = args.checkpoint
    if checkpoint is None and not (default_checkpoint_dir() / "config.json").is_file():
        # No trained embedded model in this installation yet: serve an untrained tiny one, and say so.
        checkpoint = str(cache_dir() / "untrained-tiny")
        from model.pipeline import CounterfactualPipeline
        from training.centroids import compute_centroids

        if not (cache_dir() / "untrained-tiny" / "config.json").is_file():
            pipe = CounterfactualPipeline.from_preset("tiny")
            pipe.centroids = compute_centroids(pipe, m=4)
            pipe.save_pretrained(checkpoint)
        print(
            "whatif: WARNING: no trained embedded model in this installation; serving an UNTRAINED tiny "
            "model (its images are not meaningful)",
            file=sys.stderr,
        )
    settings = _settings(args, checkpoint)
    celery = make_celery(settings)
    start_embedded_worker(celery)
    print(
        f"whatif: serving on http://{args.host}:{args.port}/ (authentication "
        f"{'off: local only' if settings.auth_disabled else 'on'})",
        file=sys.stderr,
    )
    # "warning": no request lines at all; create_app's filter would cut their query strings anyway
    # (api/access_log.py), as it does under the deployed `uvicorn --factory` command.
    uvicorn.run(create_app(settings, celery), host=args.host, port=args.port, log_level="warning")
    return 0


def _settings(args, checkpoint):
    from pydantic import ValidationError

    from api.core.config import Settings
    from training.phantom.cache import cache_dir

    local = args.host in ("127.0.0.1", "localhost", "::1")
    try:
        return Settings(
            single_machine=True,
            auth_disabled=local,
            bind_host=args.host,
            broker_url="memory://",
            blob_dir=str(cache_dir() / "blobs"),
            checkpoint=checkpoint,
        )
    except ValidationError as exc:
        raise UsageError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
