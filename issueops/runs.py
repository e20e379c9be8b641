"""The per-run record in the object store (runs/<run_id>/): spec, step states, errors, outputs.

Every pipeline step, wherever it runs, reports here, so the CLI, the bridge and the history
writer can assemble one RunResult from the store alone.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from issueops.errors import InvalidInput, IssueOpsError
from issueops.logs import mask
from issueops.policy import STEP_POLICIES
from issueops.results import RunResult, StepTiming
from issueops.store import ObjectStore

PIPELINE_STEPS = ("prepare_data", "train", "evaluate", "judge")


def new_run_id(now: datetime | None = None) -> str:
    """train-YYYYMMDD-HHMMSS-xxxx: the seed's job name plus a suffix so parallel runs never collide."""
    now = now or datetime.now(UTC)
    return f"train-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def _step_order(name: str) -> int:
    order = list(STEP_POLICIES)
    return order.index(name) if name in order else len(order)


class StepTimeout(IssueOpsError):
    """A step ran past its time limit."""


@contextmanager
def step_guard(store: ObjectStore, run_id: str, name: str) -> Iterator[None]:
    """Record a step's start, end and error; enforce its timeout where signals allow (local runner)."""
    record = RunRecord(store, run_id)
    earlier = record.error()
    if earlier and earlier.get("step") == name and earlier.get("exit_code") == 2:
        # A retry cannot fix bad input: fail at once with the same explanation.
        raise InvalidInput(earlier["problems"][0], problems=earlier["problems"])
    started = time.monotonic()
    record.write(f"steps/{name}.json", {"name": name, "status": "running", "started_at": utcnow()})
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
        status = {"name": name, "status": "failed", "seconds": round(time.monotonic() - started, 3)}
        record.write(f"steps/{name}.json", status)
        problems = exc.problems if isinstance(exc, IssueOpsError) else [f"{type(exc).__name__}: {exc}"]
        record.write(
            "error.json",
            {
                "step": name,
                "kind": type(exc).__name__,
                "exit_code": getattr(exc, "exit_code", 1),
                "problems": [mask(str(p)) for p in problems],
                "time": utcnow(),
            },
        )
        raise
    else:
        record.write(
            f"steps/{name}.json",
            {
                "name": name,
                "status": "done",
                "seconds": round(time.monotonic() - started, 3),
                "finished_at": utcnow(),
            },
        )
    finally:
        if previous is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


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
    decision = judgement.get("decision") or ("error" if error else "unknown")
    message = judgement.get("message") or ("; ".join(error["problems"]) if error else "")
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
        steps=record.steps(),
        warnings=[f"step {error['step']} failed: {'; '.join(error['problems'])}"]
        if error and judgement
        else [],
    )


def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    return json.loads(store.get_bytes(key)) if store.exists(key) else None
