"""The webhook receiver: verify, de-duplicate, queue, answer — the work happens after the answer.

GitHub gives a receiver 10 seconds. Nothing slow happens before the reply: the size is checked
from Content-Length before the body is read (413 over 1 MiB), the HMAC-SHA256 signature over the
raw body is compared in constant time (401 when missing or wrong, and nothing is recorded), the
delivery is written to the durable inbox keyed by X-GitHub-Delivery (a redelivery answers 200
and queues nothing), and the reply is 202. Nothing in the body is read here, not even its JSON:
the bridge's worker picks the delivery up from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from urllib.parse import parse_qs

from aiohttp import web

from issueops.bridge.inbox import Inbox

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
HANDLED_EVENTS = frozenset({"issues", "issue_comment"})
WEBHOOK_PATHS = ("/webhook", "/")


def sign(secret: str | bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_ok(secret: str | bytes, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def _answer(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"status": status, "message": message, **extra}, status=status)


def make_app(
    inbox: Inbox, secret: str | bytes, *, ready: Callable[[], bool] = lambda: True
) -> web.Application:
    """The aiohttp application: POST /webhook (and /), GET /healthz, /readyz and /metrics."""
    if not secret:
        raise ValueError("a webhook secret is required")

    async def receive(request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            response = _answer(413, f"payload over {MAX_BODY_BYTES} bytes")
            response.force_close()  # do not read (or wait for) the rest of the body
            return response
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            response = _answer(413, f"payload over {MAX_BODY_BYTES} bytes")
            response.force_close()
            return response
        if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
            return _answer(401, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if not event or not delivery or len(delivery) > 100:
            return _answer(400, "X-GitHub-Event and X-GitHub-Delivery are required")
        if event == "ping":
            return _answer(200, "pong")
        if event not in HANDLED_EVENTS:
            return _answer(202, f"{event} events are ignored")
        if request.content_type == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8", "replace"))
            body = (form.get("payload") or [""])[0].encode()
        # Not decoded here: a signed body is GitHub's JSON, and decoding one costs ~15 ns a byte
        # (2 ms for a comment of 64 KiB of blank lines) that the next delivery would wait for.
        # The worker decodes it, and drops one that is not a JSON object with a log line.
        if body.lstrip()[:1] != b"{":
            return _answer(400, "the payload is not a JSON object")
        if not inbox.accept(delivery, event, body):
            return _answer(200, "duplicate delivery; already handled", delivery=delivery)
        return _answer(202, "queued", delivery=delivery)

    async def healthz(request: web.Request) -> web.Response:
        return _answer(200, "ok")

    async def readyz(request: web.Request) -> web.Response:
        return _answer(200, "ready") if ready() else _answer(503, "not ready")

    # aiohttp's own limit backs up the Content-Length check for chunked bodies.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for path in WEBHOOK_PATHS:
        app.router.add_post(path, receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the issueops series (issueops.monitoring.metrics), in the format the scraper asks for."""
    from issueops.monitoring.metrics import exposition

    body, content_type = exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


class HttpServer:
    """An aiohttp application served from its own thread and event loop (tests, benchmark, CLI)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._serve, name="webhook-http", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()  # closes connections and lets their handlers finish
        asyncio.get_running_loop().stop()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        if self._thread is not None:
            self._thread.join(30)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
