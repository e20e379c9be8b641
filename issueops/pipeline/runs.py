"""The per-run record in the object store (runs/<run_id>/): spec, step states, errors, outputs.

Every pipeline step, wherever it runs, reports here, so the CLI, the bridge and the history
writer can assemble one RunResult from the store alone.

A run on this machine (`issueops run`, a bridge attempt, the MCP server's `train`) also records
the process that runs it (owner.json) and, once it ends, finished.json. A record whose owner is
gone without finishing reads as interrupted (`run_state`), never as a pass or an unknown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from issueops.config import Settings, utcnow
from issueops.errors import IssueOpsError, lineage, recorded_error
from issueops.logs import configure_logging, log_context, mask
from issueops.monitoring import metrics
from issueops.pipeline.policy import STEP_POLICIES
from issueops.results import Decision, RunResult, StepStatus, StepTiming
from issueops.store import ObjectStore

PIPELINE_STEPS = ("prepare_data", "train", "evaluate", "judge")

log = logging.getLogger(__name__)


def new_run_id(now: datetime | None = None, *, key: str | None = None) -> str:
    """train-YYYYMMDD-HHMMSS-xxxx: the job name plus a suffix so parallel runs never collide; with
    `key`, the suffix is derived from it, so the same attempt always gets the same id."""
    now = now or utcnow()
    suffix = hashlib.sha1(key.encode()).hexdigest()[:4] if key else secrets.token_hex(2)
    return f"train-{now:%Y%m%d-%H%M%S}-{suffix}"


class RunRecord:
    def __init__(self, store: ObjectStore, run_id: str):
        self.store, self.run_id = store, run_id

    def key(self, name: str) -> str:
        return f"runs/{self.run_id}/{name}"

    def write(self, name: str, data: dict[str, Any]) -> None:
        self.store.put_bytes(self.key(name), json.dumps(data, indent=2, default=str).encode())

    def read(self, name: str) -> dict[str, Any] | None:
        key = self.key(name)
        return json.loads(self.store.get_bytes(key)) if self.store.exists(key) else None

    def steps(self) -> list[StepTiming]:
        found = {}
        for key in self.store.list(f"runs/{self.run_id}/steps"):
            data = json.loads(self.store.get_bytes(key))
            found[data["name"]] = StepTiming(data["name"], data["status"], data.get("seconds"))
        return sorted(found.values(), key=lambda s: _step_order(s.name))

    def error(self) -> dict[str, Any] | None:
        return self.read("error.json")

    def owner(self) -> RunOwner | None:
        data = self.read("owner.json")
        return RunOwner.from_dict(data) if data else None


class RunState(StrEnum):
    """Where a run stands, as far as its record tells."""

    RUNNING = "running"  # its owner process is alive and it has not finished
    FINISHED = "finished"  # it ended: with a decision, an error, or bad input
    INTERRUPTED = "interrupted"  # its owner process died before it finished (kill -9, crash, restart)
    UNKNOWN = "unknown"  # no owner on this machine to ask (a cluster run, or an older record)


@dataclass(frozen=True)
class RunOwner:
    """The process that runs a run. `started` (clock ticks after boot) and `boot_id` tell a process
    from a later one that reuses its pid."""

    host: str
    boot_id: str
    pid: int
    started: int

    @classmethod
    def current(cls) -> RunOwner:
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, _start_ticks(pid) or 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOwner | None:
        try:
            return cls(str(data["host"]), str(data["boot_id"]), int(data["pid"]), int(data["started"]))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_json(cls, text: str | None) -> RunOwner | None:
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        return cls.from_dict(data) if isinstance(data, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def alive(self) -> bool | None:
        """True while the process runs, False once it is gone (or a zombie), None when this machine
        cannot tell (another host, or no /proc)."""
        if self.host != socket.gethostname() or not self.boot_id or not self.started:
            return None
        if self.boot_id != _boot_id():
            return False  # the machine restarted since
        return _start_ticks(self.pid) == self.started

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat); None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def mark_owner(store: ObjectStore, run_id: str, owner: RunOwner | None = None) -> RunOwner:
    """Record that this process (or `owner`) runs the run, so that its death reads as interruption."""
    owner = owner or RunOwner.current()
    RunRecord(store, run_id).write("owner.json", owner.to_dict())
    return owner


def mark_finished(store: ObjectStore, run_id: str) -> None:
    RunRecord(store, run_id).write("finished.json", {"time": utcnow().isoformat()})


def mark_interrupted(store: ObjectStore, run_id: str, reason: str) -> None:
    record = RunRecord(store, run_id)
    if record.read("interrupted.json") is None:
        record.write("interrupted.json", {"time": utcnow().isoformat(), "reason": reason})


def run_state(store: ObjectStore, run_id: str) -> RunState:
    """RUNNING, FINISHED, INTERRUPTED or UNKNOWN. The first reader to find the owner gone records
    the interruption (interrupted.json), so it stays known after a reboot or on another machine."""
    record = RunRecord(store, run_id)
    if store.exists(record.key("interrupted.json")):
        return RunState.INTERRUPTED
    if store.exists(record.key("finished.json")):
        return RunState.FINISHED
    owner = record.owner()
    alive = owner.alive() if owner else None
    if alive is None:
        return RunState.UNKNOWN
    if alive:
        return RunState.RUNNING
    if store.exists(record.key("finished.json")):  # it finished just now
        return RunState.FINISHED
    running = [s.name for s in record.steps() if s.status == StepStatus.RUNNING]
    where = f" during step {running[-1]}" if running else ""
    mark_interrupted(store, run_id, f"the process that ran it ({owner.describe()}) is gone{where}")
    return RunState.INTERRUPTED


def _step_order(name: str) -> int:
    order = list(STEP_POLICIES)
    return order.index(name) if name in order else len(order)


class StepTimeout(IssueOpsError):
    """A step ran past its time limit."""


@contextmanager
def step_guard(store: ObjectStore, run_id: str, name: str) -> Iterator[None]:
    """Record a step's start, end and error; enforce its timeout where signals allow (local runner).
    What the step logs carries its run id and issue (JSON logs), and its end is logged with its
    duration and status."""
    # A step runs in a process of its own (a fork of the local runner, a KFP pod): its lines go
    # to stderr (the run's log file, the pod's log), as JSON lines when asked.
    settings = Settings.from_env()
    configure_logging(settings.log_level or "INFO", json_lines=settings.log_json, service="issueops-step")
    record = RunRecord(store, run_id)
    issue = (record.read("request.json") or {}).get("issue")
    with log_context(execution_id=run_id, issue_number=issue):
        with _guarded(record, name):
            yield


@contextmanager
def _guarded(record: RunRecord, name: str) -> Iterator[None]:
    earlier = record.error()
    if earlier and earlier.get("step") == name and not earlier.get("retry", True):
        # The error's kind says a retry cannot fix it (bad input, a conflict): fail at once
        # with the same kind and the same explanation.
        raise recorded_error(earlier.get("lineage") or [earlier["kind"]], earlier["problems"])
    started = time.monotonic()
    record.write(
        f"steps/{name}.json", {"name": name, "status": StepStatus.RUNNING, "started_at": utcnow().isoformat()}
    )
    policy = STEP_POLICIES.get(name)

    def on_timeout(signum, frame):  # noqa: ARG001 - signal handler signature
        limit = f"{policy.timeout_s // 60}-minute" if policy.timeout_s >= 60 else f"{policy.timeout_s}-second"
        raise StepTimeout(f"Step {name} ran past its {limit} limit.")

    previous = None
    if policy:
        try:
            previous = signal.signal(signal.SIGALRM, on_timeout)
            signal.alarm(policy.timeout_s)
        except ValueError:  # not the main thread: the cluster's pod deadline applies instead
            previous = None
    try:
        yield
    except Exception as exc:
        status = {"name": name, "status": StepStatus.FAILED, "seconds": round(time.monotonic() - started, 3)}
        record.write(f"steps/{name}.json", status)
        _log_step_end(name, status)
        problems = exc.problems if isinstance(exc, IssueOpsError) else [f"{type(exc).__name__}: {exc}"]
        answer = exc.outcome() if isinstance(exc, IssueOpsError) else IssueOpsError.answer
        record.write(
            "error.json",
            {
                "step": name,
                "kind": type(exc).__name__,
                "lineage": lineage(exc),
                "exit_code": answer.exit_code,
                "retry": answer.step_retry,
                "problems": [mask(str(p)) for p in problems],
                "time": utcnow().isoformat(),
            },
        )
        raise
    else:
        status = {
            "name": name,
            "status": StepStatus.DONE,
            "seconds": round(time.monotonic() - started, 3),
            "finished_at": utcnow().isoformat(),
        }
        record.write(f"steps/{name}.json", status)
        _log_step_end(name, status)
    finally:
        if previous is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def _log_step_end(name: str, status: dict[str, Any]) -> None:
    log.info(
        "step %s %s in %.1f s",
        name,
        status["status"],
        status["seconds"],
        extra={"duration_ms": round(status["seconds"] * 1000), "status": status["status"]},
    )


def observe_run(store: ObjectStore, run_id: str) -> None:
    """A run stopped running: its step durations and undelivered notifications, read from its
    record, go to the metrics of the process that follows it (the bridge or the operator). Its
    steps ran elsewhere (forked tasks, KFP pods) and wrote only here."""
    record = RunRecord(store, run_id)
    for step in record.steps():
        if step.seconds is not None and step.status in (StepStatus.DONE, StepStatus.FAILED):
            metrics.observe_step(step.name, step.seconds)
    for key in store.list(f"runs/{run_id}"):
        if key.rsplit("/", 1)[-1].startswith("notify-") and key.endswith(".json"):
            report = json.loads(store.get_bytes(key))
            for delivery in report.get("deliveries") or []:
                if delivery.get("status") == "failed":
                    metrics.count_notification_failure(delivery.get("channel") or "unknown")


def collect_result(store: ObjectStore, run_id: str) -> RunResult:
    """Assemble the RunResult of a run from what its steps wrote to the store."""
    record = RunRecord(store, run_id)
    request = record.read("request.json") or {}
    spec = request.get("spec", {})
    judgement = record.read("judgement.json") or {}
    evaluation = _read_json(store, f"evaluations/{run_id}/results.json") or {}
    metadata = _read_json(store, f"processed/{run_id}/metadata.json") or {}
    registration = record.read("registration.json") or {}
    serving = record.read("serving.json") or {}
    history = record.read("history.json") or {}
    error = record.error()
    artifacts = {
        "processed": store.uri(f"processed/{run_id}"),
        "model": store.uri(f"models/{run_id}"),
        "evaluation": store.uri(f"evaluations/{run_id}/results.json"),
    }
    for plot in evaluation.get("plots", []):
        artifacts[plot] = store.uri(f"evaluations/{run_id}/{plot}")
    decision = judgement.get("decision") or (Decision.ERROR if error else Decision.UNKNOWN)
    message = judgement.get("message") or ("; ".join(error["problems"]) if error else "")
    steps = record.steps()
    if run_state(store, run_id) is RunState.INTERRUPTED:
        why = (record.read("interrupted.json") or {}).get("reason") or "its process is gone"
        decision, message = Decision.INTERRUPTED, f"Run {run_id} was interrupted: {why}."
        steps = [
            StepTiming(s.name, StepStatus.INTERRUPTED, s.seconds) if s.status == StepStatus.RUNNING else s
            for s in steps
        ]
    return RunResult(
        run_id=run_id,
        spec=spec,
        decision=decision,
        message=message,
        evaluation_metric=evaluation.get("evaluation_metric") or spec.get("evaluation_metric", ""),
        threshold=spec.get("evaluation_threshold"),
        metric_value=evaluation.get("value"),
        metrics=evaluation.get("metrics", {}),
        data_summary={
            k: metadata[k]
            for k in (
                "dataset_id",
                "source",
                "num_samples",
                "num_features",
                "rows",
                "target",
                "classes",
                "missing_values",
                "class_counts",
                "environment",
                "rllib_algorithm",
                "note",
            )
            if k in metadata
        },
        artifacts=artifacts,
        issue=request.get("issue"),
        repository=request.get("repository"),
        attempt=request.get("attempt", 1),
        model_name=registration.get("model_name"),
        model_version=registration.get("version"),
        alias=registration.get("alias"),
        endpoint=serving.get("endpoint"),
        served_version=None if serving.get("served_version") is None else str(serving["served_version"]),
        history_path=history.get("url") or history.get("path"),
        started_at=request.get("started_at"),
        finished_at=judgement.get("time"),
        steps=steps,
        champion=judgement.get("champion"),
        warnings=[f"step {error['step']} failed: {'; '.join(error['problems'])}"]
        if error and judgement
        else [],
    )


def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    return json.loads(store.get_bytes(key)) if store.exists(key) else None
