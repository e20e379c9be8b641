"""`issueops monitor serve`: the CloudEvents receiver a KServe InferenceService's logger posts to.

KServe's payload logger (`spec.predictor.logger: {mode: all, url: ...}`) POSTs every request and
response as a CloudEvent, in binary mode. The receiver turns them into the stored form
(`events_from_http`) and hands them to a `PayloadLogger`, which writes them in batches to
monitoring/<model>/<version>/<date>/ off the request path: the same files `issueops serve` writes,
read by the same reader. The answer comes before the write: 202 when queued, 400 for what is not an
inference CloudEvent, 503 when the logger's bounded queue is full (the event is dropped and counted
rather than held until the receiver runs out of memory).

Served on aiohttp like the bridge's webhook (`issueops.bridge.webhook.HttpServer`).
"""

from __future__ import annotations

from aiohttp import web

from issueops.bridge.webhook import metrics as metrics_route
from issueops.errors import InvalidInput

from .payload_logger import PayloadLogger
from .payloads import events_from_http

MAX_BODY_BYTES = 32 * 1024 * 1024  # a batch request's tensors; KServe posts one event at a time
RECEIVER_PATHS = ("/", "/events")


def _answer(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"status": status, "message": message, **extra}, status=status)


def make_receiver_app(logger: PayloadLogger) -> web.Application:
    """POST / and /events (CloudEvents in binary or structured mode, or a batch), GET /healthz,
    /readyz and /metrics (payload-log drops and queue depth)."""

    async def receive(request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            response = _answer(413, f"payload over {MAX_BODY_BYTES} bytes")
            response.force_close()
            return response
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            response = _answer(413, f"payload over {MAX_BODY_BYTES} bytes")
            response.force_close()
            return response
        try:
            events = events_from_http(request.headers, body)
        except InvalidInput as error:
            return _answer(error.outcome().http_status, str(error))
        if not logger.log_events(events):
            return _answer(503, "the payload log is behind; these events were dropped and counted")
        return _answer(202, "queued", events=len(events))

    async def healthz(request: web.Request) -> web.Response:
        return _answer(200, "ok")

    async def readyz(request: web.Request) -> web.Response:
        return _answer(200, "ready", **logger.stats.as_dict())

    async def metrics(request: web.Request) -> web.Response:
        logger.publish_queue_depth()
        return await metrics_route(request)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for path in RECEIVER_PATHS:
        app.router.add_post(path, receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
