"""`issueops bridge serve` (webhook receiver) and `issueops bridge poll` (no public URL needed)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from issueops.config import Settings
from issueops.errors import InvalidInput

log = logging.getLogger(__name__)


def add_bridge_parser(subparsers) -> None:
    bridge = subparsers.add_parser("bridge", help="GitHub bridge: webhook receiver or poller")
    commands = bridge.add_subparsers(dest="bridge_command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="receive GitHub webhooks (needs GITHUB_WEBHOOK_SECRET)")
    serve.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=None,  # ISSUEOPS_BRIDGE_PORT, read in cmd_serve so a bad setting is a sentence
        help="port to listen on (default 8080)",
    )
    serve.set_defaults(handler=cmd_serve)

    poll = commands.add_parser("poll", help="poll labelled issues and new comments (needs GITHUB_TOKEN)")
    poll.add_argument("--once", action="store_true", help="one round: queue what is new, handle it, exit")
    poll.add_argument("--interval", type=float, default=60.0, help="seconds between rounds (default 60)")
    poll.set_defaults(handler=cmd_poll)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def _bridge_port(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"ISSUEOPS_BRIDGE_PORT must be a port (1-65535), got {raw!r}.") from None


def cmd_serve(args) -> int:
    from issueops.bridge.webhook import HttpServer, make_app
    from issueops.bridge.wiring import open_bridge

    settings = Settings.from_env()
    secret = settings.github_webhook_secret
    if not secret:
        raise InvalidInput("Set GITHUB_WEBHOOK_SECRET to the secret configured on the GitHub webhook.")
    host = args.host or settings.bridge_host
    port = args.port if args.port is not None else _bridge_port(settings.bridge_port)
    if not 0 < port < 65536:
        raise InvalidInput(f"--port must be 1-65535, got {port}.")
    bridge = open_bridge(settings)
    stop = _stop_on_signals()
    server = HttpServer(make_app(bridge.inbox, secret), host, port).start()
    worker, worker_stop = bridge.start()
    print(f"issueops bridge: listening on {server.url}/webhook", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        worker_stop.set()
        bridge.inbox.wake.set()
        worker.join(30)
    return 0


def cmd_poll(args) -> int:
    from issueops.bridge.poll import GitHubAskedToWait, Poller
    from issueops.bridge.wiring import open_bridge

    if args.interval < 1:
        raise InvalidInput("--interval must be at least 1 second.")
    settings = Settings.from_env()
    bridge = open_bridge(settings)
    poller = Poller(settings, bridge.inbox, label=bridge.label)
    try:
        if args.once:
            try:
                found = poller.poll_once()
            except GitHubAskedToWait as wait:
                print(f"issueops bridge poll: {wait}", file=sys.stderr)
                return 75  # EX_TEMPFAIL: run again later
            bridge.run_once()
            print(f"queued {found.queued} new event(s); {found.not_modified} list(s) unchanged")
            return 0
        stop = _stop_on_signals()
        worker, worker_stop = bridge.start()
        print(
            f"issueops bridge: polling {settings.github_repository} every {args.interval:g} s",
            file=sys.stderr,
            flush=True,
        )
        poller.run(stop, args.interval)
        worker_stop.set()
        bridge.inbox.wake.set()
        worker.join(30)
        return 0
    finally:
        poller.close()
