"""Hostile input: the spec reader over fuzzed bodies, and the webhook's 202 while hostile comments arrive.

(a) BENCH_HOSTILE_BODIES (10,000) seeded nasty bodies (tests/hostile_bodies.py: deep nesting, huge
    numbers, duplicate keys, control characters, tags, 64 KiB floods of blank lines...) through
    `parse_issue_body`: how many were accepted, refused with our sentence, or crashed (must be 0),
    and the parse time per body.
(b) Valid signed `issues.opened` deliveries (of issues that are no training request, so that the
    worker's own load does not hide the hostile comments' cost), one at a time from another
    process, against the bridge (receiver and worker, as `bridge serve` runs them), while a third
    process sends 64 KiB hostile comments at BENCH_HOSTILE_RATE (10) per second in every other
    one-second window: the accept latency p50/p99 with and without hostile traffic, and their
    ratio (target at p99: <= 1.5). Both halves share the run, so other load on the machine hits
    them alike. The hostile comments come from someone with no access (refused before their text
    is read) and, as a second figure, from a collaborator (their YAML is read, and refused).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from benchmarks.bench_webhook import SECRET, _open_bridge, _percentile, delivery_headers, issues_opened

BODIES = int(os.environ.get("BENCH_HOSTILE_BODIES", "10000"))
RATE = float(os.environ.get("BENCH_HOSTILE_RATE", "10"))
VALID = int(os.environ.get("BENCH_HOSTILE_VALID", "1000"))
PACE = float(os.environ.get("BENCH_HOSTILE_PACE_S", "0.02"))  # between valid deliveries
WINDOW_S = 1.0  # hostile comments are sent in every other window of this length
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STRANGER, COLLABORATOR = "mallory", "bench-user"


def fuzz() -> None:
    from issueops.errors import SpecError
    from issueops.spec.body import parse_issue_body
    from tests.hostile_bodies import fuzzed_bodies

    counts = {"accepted": 0, "refused": 0, "crashed": 0}
    seconds: list[float] = []
    crashes: dict[str, int] = {}
    for body in fuzzed_bodies(BODIES):
        started = time.perf_counter()
        try:
            parse_issue_body(body)
            counts["accepted"] += 1
        except SpecError:
            counts["refused"] += 1
        except Exception as exc:  # what the benchmark is there to count
            counts["crashed"] += 1
            crashes[type(exc).__name__] = crashes.get(type(exc).__name__, 0) + 1
        seconds.append(time.perf_counter() - started)
    print(
        f"   (a) {BODIES:,} fuzzed bodies: {counts['accepted']:,} accepted, {counts['refused']:,} refused, "
        f"{counts['crashed']} crashed{' ' + str(crashes) if crashes else ''}"
    )
    print(
        f"       parse time p50 {_percentile(seconds, 0.5) * 1e3:.2f} ms, "
        f"p99 {_percentile(seconds, 0.99) * 1e3:.2f} ms, max {max(seconds) * 1e3:.1f} ms"
    )
    if counts["crashed"]:
        raise SystemExit("the spec reader raised something other than SpecError")


# ---------------------------------------------------------------------- (b) the load (child processes)


def _comment(number: int, comment_id: int, body: str, login: str) -> bytes:
    payload = json.loads(issues_opened(number))
    payload["action"] = "created"
    payload["sender"] = {**payload["sender"], "login": login}
    payload["comment"] = {
        "id": comment_id,
        "body": body,
        "user": payload["sender"],
        "author_association": "NONE",
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:00:00Z",
    }
    return json.dumps(payload).encode()


def _opened_unlabelled(number: int) -> bytes:
    """An `issues.opened` delivery of an issue that is no training request, as most of a
    repository's deliveries are: the worker drops it at once, so the baseline measures the
    receiver, and the difference is what the hostile comments cost it."""
    payload = json.loads(issues_opened(number))
    payload["issue"]["labels"] = []
    return json.dumps(payload).encode()


def _hostile_window(now: float, start: float) -> bool:
    """Whether hostile comments are sent at `now`: every other WINDOW_S, from `start`."""
    return now >= start and int((now - start) / WINDOW_S) % 2 == 1


def _send_hostile(url: str, bodies: list[tuple[str, bytes, str]], start: float, stop, queue) -> None:
    """Hostile comments at RATE per second in every other window, until `stop`; how many went."""
    import httpx

    sent = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() and sent < len(bodies):
            if not _hostile_window(time.time(), start):
                time.sleep(0.01)
                continue
            delivery, body, signature = bodies[sent]
            headers = delivery_headers("issue_comment", delivery, signature)
            started = time.perf_counter()
            client.post(f"{url}/webhook", content=body, headers=headers)
            sent += 1
            time.sleep(max(0.0, 1.0 / RATE - (time.perf_counter() - started)))
    queue.put(sent)


def _send_valid(url: str, bodies: list[tuple[str, bytes, str]], start: float, queue) -> None:
    """Valid deliveries one at a time, PACE_S apart from `start`: each one's accept latency and
    status, and whether hostile comments were being sent meanwhile."""
    import aiohttp

    async def run() -> tuple[list[tuple[float, bool]], list[int]]:
        latencies, statuses = [], []
        await asyncio.sleep(max(0.0, start - time.time()))
        async with aiohttp.ClientSession() as session:
            for delivery, body, signature in bodies:
                headers = delivery_headers("issues", delivery, signature)
                hostile = _hostile_window(time.time(), start)
                started = time.perf_counter()
                async with session.post(f"{url}/webhook", data=body, headers=headers) as answer:
                    await answer.read()
                latencies.append((time.perf_counter() - started, hostile))
                statuses.append(answer.status)
                await asyncio.sleep(PACE)
        return latencies, statuses

    queue.put(asyncio.run(run()))


def _signed(delivery: str, body: bytes) -> tuple[str, bytes, str]:
    from issueops.bridge.webhook import sign

    return delivery, body, sign(SECRET, body)


def _round(bridge, url: str, tag: str, hostile: list) -> tuple[list[float], list[float], int]:
    """Valid deliveries throughout, hostile comments every other window: the accept latencies
    without and with hostile traffic (alike exposed to whatever else the machine does)."""
    context = multiprocessing.get_context("spawn")
    results, stop = context.Queue(), context.Event()
    valid = [_signed(f"valid-{tag}-{n}", _opened_unlabelled(n)) for n in range(1000, 1000 + VALID)]
    start = time.time() + 3.0  # both senders are up by then
    sender = context.Process(target=_send_hostile, args=(url, hostile, start, stop, results))
    measurer = context.Process(target=_send_valid, args=(url, valid, start, results))
    sender.start()
    measurer.start()
    latencies, statuses = results.get(timeout=600)
    measurer.join(30)
    stop.set()
    sent = results.get(timeout=60)
    sender.join(30)
    if any(s != 202 for s in statuses):
        raise SystemExit(f"{tag}: {sum(s != 202 for s in statuses)} valid deliveries were not accepted")
    deadline = time.monotonic() + 600
    while bridge.inbox.counts().get("queued") and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker catches up before the next round
    quiet = [seconds for seconds, hostile in latencies if not hostile]
    loud = [seconds for seconds, hostile in latencies if hostile]
    return quiet, loud, sent


def under_hostile_comments(home: Path) -> None:
    from issueops.bridge.webhook import HttpServer, make_app
    from tests.hostile_bodies import comment_floods

    bridge = _open_bridge(home)  # allowlist: bench-user (the collaborator); mallory has no access
    inbox = bridge.inbox
    # Issue 1 has a request, so a comment on it is operator input to authorise (and then to read).
    inbox.accept("setup", "issues", issues_opened(1))
    bridge.run_once()
    server = HttpServer(make_app(inbox, SECRET)).start()
    worker, stop_worker = bridge.start(interval=0.2)
    count = int(RATE * (VALID * (PACE + 0.01) + 10))
    floods = comment_floods()
    sources = {
        "stranger": (STRANGER, floods["command, then blank lines"]),
        "collaborator": (COLLABORATOR, floods["input key, then blank lines"]),
    }
    # Latencies pooled over the rounds: without and with hostile comments, per kind of sender.
    without: dict[str, list[float]] = {name: [] for name in sources}
    with_them: dict[str, list[float]] = {name: [] for name in sources}
    sent: dict[str, int] = dict.fromkeys(sources, 0)
    ident = 10_000
    try:
        for r in range(ROUNDS):
            for name, (login, text) in sources.items():
                hostile = []
                for _ in range(count):
                    ident += 1
                    hostile.append(_signed(f"hostile-{ident}", _comment(1, ident, text, login)))
                quiet, loud, went = _round(bridge, server.url, f"{name}-{r}", hostile)
                without[name] += quiet
                with_them[name] += loud
                sent[name] += went
    finally:
        stop_worker.set()
        inbox.wake.set()
        worker.join(30)
        server.stop()
        inbox.close()

    print(
        f"   (b) {VALID} valid issues.opened a round, one every {PACE * 1e3:.0f} ms; 64 KiB hostile comments "
        f"at {RATE:g}/s in every other {WINDOW_S:g} s window ({ROUNDS} rounds, pooled)"
    )
    print(
        f"       {'hostile comments':30} {'without: p50':>12} {'p99 ms':>7}   {'with: p50':>9} {'p99 ms':>7}  sent"
    )
    labels = {"stranger": "from someone without access", "collaborator": "from a collaborator (read)"}
    for name, label in labels.items():
        quiet, loud = without[name], with_them[name]
        print(
            f"       {label:30} {_percentile(quiet, 0.5) * 1e3:12.2f} {_percentile(quiet, 0.99) * 1e3:7.2f}   "
            f"{_percentile(loud, 0.5) * 1e3:9.2f} {_percentile(loud, 0.99) * 1e3:7.2f}  {sent[name]:4d}"
        )
    for name, label in labels.items():
        quiet, loud = without[name], with_them[name]
        print(
            f"       ratio with / without, {label}: "
            f"p50 x{_percentile(loud, 0.5) / _percentile(quiet, 0.5):.2f}, "
            f"p99 x{_percentile(loud, 0.99) / _percentile(quiet, 0.99):.2f} (target <= 1.5 at p99)"
        )


def main() -> None:
    fuzz()
    with tempfile.TemporaryDirectory() as tmp:
        under_hostile_comments(Path(tmp) / "hostile")


if __name__ == "__main__":
    main()
