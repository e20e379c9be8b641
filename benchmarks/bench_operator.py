"""The operator under load against a real API server (tests/controlplane).

50 TrainingRequests (a one-tree forest that misses its threshold, no retry: one attempt each) are
created at once with ISSUEOPS_MAX_RUNNING=4 while the operator runs as a process (`kopf run`,
attempts on the local runner). One watch records every phase change in the order the API server
made them: time from create to Running (p50/p99), the most Running at once (never above 4), and
the end of each. Lost = not ended or never run; duplicated = an attempt submitted twice. The
baseline is one request alone on the same operator: 50 × its time / 4 is what perfect packing
into four slots would take. The operator's RSS is read at start and end; the control plane's
build and start times are printed first.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REQUESTS = int(os.environ.get("BENCH_OPERATOR_REQUESTS", "50"))
MAX_RUNNING = int(os.environ.get("BENCH_OPERATOR_MAX_RUNNING", "4"))
INTERVAL = os.environ.get("BENCH_OPERATOR_INTERVAL", "0.5")  # the operator's timer, seconds
ENDED = ("Succeeded", "Failed", "RolledBack", "Cancelled")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watch:
    """Every TrainingRequest change in one namespace, timestamped as it arrives."""

    def __init__(self, api, namespace: str):
        self.api, self.namespace = api, namespace
        self.first_running: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.phases: dict[str, str] = {}
        self.most_running = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from kubernetes import watch

        from issueops.lifecycle.crd import GROUP, PLURAL, VERSION

        stream = watch.Watch()
        events = stream.stream(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            timeout_seconds=3600,
        )
        try:
            for event in events:
                self._record(event["object"], time.perf_counter())
                if self._stop.is_set():
                    stream.stop()
        except Exception:  # the control plane stopping under the watch at the end
            if not self._stop.is_set():
                raise

    def _record(self, body: dict, now: float) -> None:
        name = body["metadata"]["name"]
        phase = (body.get("status") or {}).get("phase") or "Pending"
        self.phases[name] = phase
        if phase == "Running":
            self.first_running.setdefault(name, now)
        if phase in ENDED:
            self.ended.setdefault(name, now)
        self.most_running = max(self.most_running, sum(p == "Running" for p in self.phases.values()))

    def wait_ended(self, names: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and not all(n in self.ended for n in names):
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    import contextlib

    from kubernetes import client

    from issueops.lifecycle.crd import GROUP, PLURAL, VERSION
    from tests.cluster import (
        OperatorProcess,
        client_for,
        fast_spec,
        install_training_request_crd,
        training_request,
    )
    from tests.controlplane import Unavailable, running

    spec = fast_spec(evaluation_threshold=0.99, max_retry=0)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-operator-")))
        try:
            plane = stack.enter_context(running(root / "controlplane"))
        except Unavailable as error:
            print(f"   skipped: {error}")
            return
        made = plane.build
        built = (
            f"built now in {made.seconds:.0f} s"
            if made.built_now
            else f"up to date (its last build took {made.seconds:.0f} s)"
        )
        print(f"   control plane: {built}; start to ready {plane.started_seconds:.1f} s")
        api = client_for(plane.kubeconfig)
        install_training_request_crd(api)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
        requests = client.CustomObjectsApi(api)
        watch = Watch(requests, "bench")
        stack.callback(watch.stop)
        home = root / "home"
        operator = OperatorProcess(
            plane.kubeconfig,
            "bench",
            home,
            root / "operator.log",
            env={"ISSUEOPS_MAX_RUNNING": str(MAX_RUNNING), "ISSUEOPS_OPERATOR_INTERVAL": INTERVAL},
        )
        stack.enter_context(operator)
        time.sleep(5)  # started, listing and watching
        rss_start = rss_mb(operator.process.pid)

        def create(name: str) -> float:
            at = time.perf_counter()
            requests.create_namespaced_custom_object(
                GROUP, VERSION, "bench", PLURAL, training_request(name, spec)
            )
            return at

        started = create("alone")
        watch.wait_ended(["alone"], 600)
        alone = watch.ended["alone"] - started

        names = [f"r{i:03d}" for i in range(REQUESTS)]
        watch.most_running = 0
        created = {name: create(name) for name in names}
        watch.wait_ended(names, 3600)
        wall = max(watch.ended.get(n, time.perf_counter()) for n in names) - created[names[0]]
        rss_end = rss_mb(operator.process.pid)

        def status(name: str) -> dict:
            return (
                requests.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name).get("status")
                or {}
            )

        statuses = {n: status(n) for n in names}
        alone_run = status("alone").get("runId")
        attempts = {p.name.removesuffix(".spec.json") for p in (home / "attempts").glob("*.spec.json")}

    to_running = [watch.first_running[n] - created[n] for n in names if n in watch.first_running]
    submitted = attempts - {alone_run}
    run_ids = {s.get("runId") for s in statuses.values()}
    lost = [n for n in names if n not in watch.first_running or statuses[n].get("phase") not in ENDED]
    duplicated = submitted - run_ids  # a second submission would carry a run id no request records
    ideal = REQUESTS * alone / MAX_RUNNING
    cores = min(MAX_RUNNING, os.cpu_count() or 1)
    print(f"   one request alone: {alone:.1f} s from create to its end")
    print(
        f"   {REQUESTS} at once, ISSUEOPS_MAX_RUNNING={MAX_RUNNING}, operator interval {INTERVAL} s: "
        f"wall {wall:.1f} s = {wall / ideal:.2f}x of {REQUESTS} x {alone:.1f} s / {MAX_RUNNING} slots "
        f"({ideal:.0f} s), {wall / (REQUESTS * alone / cores):.2f}x of / {cores} cores"
    )
    # A queued request starts when the (k - limit)-th one before it ended: the hand-over time.
    ends = sorted(watch.ended[n] for n in names if n in watch.ended)
    starts = sorted(watch.first_running[n] for n in names if n in watch.first_running)
    handover = [start - end for start, end in zip(starts[MAX_RUNNING:], ends, strict=False)]
    if to_running:
        print(
            f"   create -> Running: p50 {percentile(to_running, 0.5):.1f} s, "
            f"p99 {percentile(to_running, 0.99):.1f} s (queued behind the limit, in creation order)"
        )
    if handover:
        print(
            f"   a freed slot to the next Running: p50 {percentile(handover, 0.5):.2f} s, "
            f"p99 {percentile(handover, 0.99):.2f} s"
        )
    print(
        f"   most Running at once {watch.most_running} (limit {MAX_RUNNING}: "
        f"{'never exceeded' if watch.most_running <= MAX_RUNNING else 'EXCEEDED'}); "
        f"lost {len(lost)}; duplicated {len(duplicated)}; submitted {len(submitted)} for {REQUESTS}; "
        f"ended {dict(Counter(s.get('phase') for s in statuses.values()))}"
    )
    print(f"   operator RSS: {rss_start:.0f} MB at start, {rss_end:.0f} MB at the end")
