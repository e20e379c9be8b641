"""Webhook accept latency and throughput on loopback, against a bare endpoint on the same stack.

Both servers are the bridge's aiohttp stack served the same way (its own thread and loop in this
process); the bare one reads the body and answers 200, the real one checks Content-Length,
verifies X-Hub-Signature-256, de-duplicates X-GitHub-Delivery in the SQLite inbox and queues the
delivery. The load comes from a separate process (so it does not share this process's GIL):
first one request at a time for p50/p99 latency, alternating bare / webhook request by request so
that other load on the machine hits both alike, then BENCH_WEBHOOK_CONCURRENCY connections for
deliveries per second. A thread checkpoints the inbox's WAL every second, as the worker does.

Last, 1,000 deliveries of `issues.opened` for 900 issues, 10% of them redeliveries, go through
the endpoint and the worker: exactly 900 requests must exist afterwards.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

SECRET = "bench-webhook-secret"
REPOSITORY = "octo-org/models"
REQUESTS = int(os.environ.get("BENCH_WEBHOOK_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("BENCH_WEBHOOK_CONCURRENCY", "16"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SPEC = """```yaml
learning_type: supervised
algorithm: random_forest
dataset_id: sklearn:breast_cancer
hyperparameters:
  n_estimators: 50
evaluation_threshold: 0.9
```"""


def _user(login: str, ident: int) -> dict:
    from tests.github_double import user_payload

    return user_payload(
        login, ident, api_url=f"https://api.github.com/users/{login}", node_id=f"U_{ident:08d}"
    )


def _repository() -> dict:
    api = f"https://api.github.com/repos/{REPOSITORY}"
    urls = {
        f"{name}_url": f"{api}/{name}{{/x}}"
        for name in (
            "archive assignees blobs branches collaborators comments commits compare contents "
            "contributors deployments downloads events forks git_commits git_refs git_tags hooks "
            "issue_comment issue_events issues keys labels languages merges milestones "
            "notifications pulls releases stargazers statuses subscribers subscription tags "
            "teams trees"
        ).split()
    }
    return {
        "id": 4242,
        "node_id": "R_kgDOabc",
        "name": "models",
        "full_name": REPOSITORY,
        "private": False,
        "owner": _user("octo-org", 1),
        "html_url": f"https://github.com/{REPOSITORY}",
        "description": "Models trained from issues",
        "fork": False,
        "url": api,
        **urls,
        "clone_url": f"https://github.com/{REPOSITORY}.git",
        "git_url": f"git://github.com/{REPOSITORY}.git",
        "ssh_url": f"git@github.com:{REPOSITORY}.git",
        "svn_url": f"https://github.com/{REPOSITORY}",
        "mirror_url": None,
        "homepage": None,
        "language": "Python",
        "default_branch": "main",
        "forks": 0,
        "forks_count": 0,
        "open_issues": 3,
        "open_issues_count": 3,
        "watchers": 5,
        "watchers_count": 5,
        "stargazers_count": 5,
        "size": 120,
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": False,
        "has_pages": False,
        "archived": False,
        "disabled": False,
        "license": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-11-01T00:00:00Z",
        "pushed_at": "2026-11-01T00:00:00Z",
    }


def issues_opened(number: int) -> bytes:
    """A `issues` / `opened` delivery in GitHub's documented shape (about 8 KB, like GitHub's)."""
    api = f"https://api.github.com/repos/{REPOSITORY}/issues/{number}"
    label = {"id": 99, "node_id": "LA_1", "url": f"{api}/labels/mlops:train", "name": "mlops:train",
             "color": "ededed", "default": False, "description": None}  # fmt: skip
    issue = {
        "url": api,
        "repository_url": f"https://api.github.com/repos/{REPOSITORY}",
        "labels_url": f"{api}/labels{{/name}}",
        "comments_url": f"{api}/comments",
        "events_url": f"{api}/events",
        "html_url": f"https://github.com/{REPOSITORY}/issues/{number}",
        "id": 10_000 + number,
        "node_id": f"I_{number:08d}",
        "number": number,
        "title": f"Train a classifier #{number}",
        "user": _user("bench-user", 7),
        "labels": [label],
        "state": "open",
        "locked": False,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": 0,
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:00:00Z",
        "closed_at": None,
        "author_association": "MEMBER",
        "active_lock_reason": None,
        "body": SPEC,
        "reactions": {
            "url": f"{api}/reactions",
            "total_count": 0,
            "+1": 0,
            "-1": 0,
            "laugh": 0,
            "hooray": 0,
            "confused": 0,
            "heart": 0,
            "rocket": 0,
            "eyes": 0,
        },  # fmt: skip
        "timeline_url": f"{api}/timeline",
        "performed_via_github_app": None,
        "state_reason": None,
    }
    payload = {
        "action": "opened",
        "issue": issue,
        "repository": _repository(),
        "sender": _user("bench-user", 7),
    }
    return json.dumps(payload).encode()


# ---------------------------------------------------------------------- the load (a child process)


def delivery_headers(event: str, delivery: str, signature: str) -> dict[str, str]:
    """The headers GitHub sends with a delivery."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
    }


def _load(url: str | list[str], bodies: list[tuple[str, bytes, str]], concurrency: int, queue) -> None:
    """Send every (delivery, body, signature) to `url` (or to its own of a list of urls);
    report latencies (s), statuses and the wall time."""
    import aiohttp

    async def run() -> tuple[list[float], list[int], float]:
        latencies: list[float] = [0.0] * len(bodies)
        statuses: list[int] = [0] * len(bodies)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            todo = iter(range(len(bodies)))

            async def worker() -> None:
                for i in todo:
                    delivery, body, signature = bodies[i]
                    headers = delivery_headers("issues", delivery, signature)
                    started = time.perf_counter()
                    target = url[i] if isinstance(url, list) else url
                    async with session.post(target, data=body, headers=headers) as answer:
                        await answer.read()
                        statuses[i] = answer.status
                    latencies[i] = time.perf_counter() - started

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, statuses, time.perf_counter() - started

    queue.put(asyncio.run(run()))


def drive(url: str | list[str], bodies: list[tuple[str, bytes, str]], concurrency: int):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_load, args=(url, bodies, concurrency, queue))
    child.start()
    latencies, statuses, wall = queue.get(timeout=600)
    child.join(30)
    return latencies, statuses, wall


def _bare_app():
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": 200}, status=200)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/webhook", ok)
    return app


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _bodies(start: int, count: int, prefix: str) -> list[tuple[str, bytes, str]]:
    from issueops.bridge.webhook import sign

    out = []
    for n in range(start, start + count):
        body = issues_opened(n)
        out.append((f"{prefix}-{n}", body, sign(SECRET, body)))
    return out


def _open_bridge(home: Path, allowlist=frozenset({"bench-user"})):
    os.environ["ISSUEOPS_HOME"] = str(home)
    for name in ("GITHUB_TOKEN", "GITHUB_REPOSITORY", "ISSUEOPS_S3_ENDPOINT", "ISSUEOPS_S3_BUCKET"):
        os.environ.pop(name, None)
    from issueops.bridge.wiring import open_bridge
    from issueops.config import Settings

    # No run slots: requests are created and queued, no pipeline runs; no GitHub calls
    # (the sender is allowlisted), so only the bridge itself is measured.
    return open_bridge(Settings.from_env(), github=lambda repo: None, allowlist=allowlist, max_running=0)


def _checkpoint_every(inbox, stop: threading.Event, seconds: float) -> None:
    while not stop.wait(seconds):
        inbox.checkpoint()


def main() -> None:
    from issueops.bridge.webhook import HttpServer, make_app

    with tempfile.TemporaryDirectory() as tmp:
        bridge = _open_bridge(Path(tmp) / "latency")
        bare = HttpServer(_bare_app()).start()
        real = HttpServer(make_app(bridge.inbox, SECRET)).start()
        # The worker's share of the inbox's upkeep, as in `bridge serve`: WAL checkpoints.
        upkeep = threading.Event()
        checkpoints = threading.Thread(
            target=_checkpoint_every, args=(bridge.inbox, upkeep, 1.0), daemon=True
        )
        checkpoints.start()
        rows = {"bare": [], "webhook": []}
        try:
            serial = max(REQUESTS // 4, 200)
            servers = (("bare", bare, 200), ("webhook", real, 202))
            for r in range(ROUNDS):
                # One at a time, alternating bare / webhook request by request: a burst of other
                # load on the machine hits both alike.
                sequential = _bodies(r * 100_000, 2 * serial, f"s{r}")
                urls = [f"{servers[i % 2][1].url}/webhook" for i in range(len(sequential))]
                latencies, statuses, _ = drive(urls, sequential, 1)
                for k, (name, server, expected) in enumerate(servers):
                    loaded = _bodies(r * 100_000 + 50_000, REQUESTS, f"{name}-c{r}")
                    _, loaded_statuses, wall = drive(f"{server.url}/webhook", loaded, CONCURRENCY)
                    bad = sum(s != expected for s in statuses[k::2] + loaded_statuses)
                    if bad:
                        raise SystemExit(f"{name}: {bad} answers were not {expected}")
                    mine = latencies[k::2]
                    rows[name].append((_percentile(mine, 0.5), _percentile(mine, 0.99), REQUESTS / wall))
        finally:
            upkeep.set()
            checkpoints.join(30)
            bare.stop()
            real.stop()
            bridge.inbox.close()

        def median(name: str, index: int) -> float:
            return statistics.median(row[index] for row in rows[name])

        print(f"   signed issues.opened, {len(issues_opened(1))} bytes, {ROUNDS} rounds (medians)")
        print(f"   {'':10} {'p50 ms':>8} {'p99 ms':>8} {'deliveries/s':>13}  (concurrency {CONCURRENCY})")
        for name in ("bare", "webhook"):
            print(
                f"   {name:10} {median(name, 0) * 1e3:8.2f} {median(name, 1) * 1e3:8.2f} "
                f"{median(name, 2):13.0f}"
            )
        print(
            f"   ratio webhook/bare: p50 x{median('webhook', 0) / median('bare', 0):.2f}, "
            f"p99 x{median('webhook', 1) / median('bare', 1):.2f}, "
            f"throughput x{median('webhook', 2) / median('bare', 2):.2f}"
        )
        print(f"   GitHub's limit is 10 s per delivery: p99 is {median('webhook', 1) * 1e3:.1f} ms")

        _deduplication(Path(tmp) / "dedup")


def _deduplication(home: Path) -> None:
    from issueops.bridge.webhook import HttpServer, make_app

    bridge = _open_bridge(home)
    server = HttpServer(make_app(bridge.inbox, SECRET)).start()
    try:
        unique = _bodies(1, 900, "dedup")
        rng = random.Random(7)
        stream = list(unique)
        for _ in range(100):  # GitHub redelivers: same delivery id, same body
            stream.insert(rng.randrange(len(stream) + 1), unique[rng.randrange(len(unique))])
        # A redelivery placed before its first delivery is still one of two sends of that id.
        _, statuses, wall = drive(f"{server.url}/webhook", stream, CONCURRENCY)
        started = time.perf_counter()
        while bridge.inbox.counts().get("queued"):
            bridge.run_once()
        handled = time.perf_counter() - started
        created = len(bridge.book.store.all())
    finally:
        server.stop()
        bridge.inbox.close()
    accepted, duplicates = statuses.count(202), statuses.count(200)
    verdict = "OK" if created == 900 and accepted == 900 and duplicates == 100 else "WRONG"
    print(
        f"   1,000 deliveries (10% redelivered): {accepted} queued, {duplicates} duplicates, "
        f"{created} requests created — {verdict} (expected 900)"
    )
    print(f"   sent in {wall:.2f} s; worker created the requests in {handled:.2f} s "
          f"({created / handled:.0f} requests/s)")  # fmt: skip
    if verdict != "OK":
        raise SystemExit("de-duplication failed")


if __name__ == "__main__":
    main()
