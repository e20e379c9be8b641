"""A training request's life: phases, attempts and operator input, one state machine for both modes.

A request is one issue (or one `TrainingRequest` resource) asking for a model. It moves through
Pending → Running → (WaitingForOperator → Pending → Running)* → Succeeded | Failed | RolledBack |
Cancelled. The transitions are plain functions of the request and what happened; the bridge's
driver and the kopf operator apply them and do the I/O. Embedded mode keeps each request as a JSON
file under ISSUEOPS_HOME/requests (written atomically, so a restart loses nothing); on a cluster the
same fields are the resource's spec and status."""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from issueops.config import Settings, utcnow
from issueops.errors import Conflict, InvalidInput
from issueops.logs import log_context
from issueops.monitoring import metrics
from issueops.pipeline.runs import new_run_id
from issueops.results import Decision, RunResult
from issueops.spec.body import TrainingSpec, validate_spec
from issueops.spec.catalog import ALGORITHMS


class Phase(StrEnum):
    """Where a training request stands; the values are stored (request JSON, the CRD's status)."""

    PENDING = "Pending"
    RUNNING = "Running"  # an attempt is training (a step's own "running" is StepStatus.RUNNING)
    WAITING = "WaitingForOperator"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    CANCELLED = "Cancelled"


PHASES = tuple(phase.value for phase in Phase)  # plain strings: the CRD schema lists them
ACTIVE_PHASES = frozenset({Phase.PENDING, Phase.RUNNING, Phase.WAITING})
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.CANCELLED})

ACTIONS = ("retrain", "approve", "rollback", "cancel", "status")
DEFAULT_OPERATOR_TIMEOUT_S = 24 * 3600
# An attempt whose run was lost to infrastructure (a pod restart, a killed process) is started
# again this many times; it does not count as one of the operator's retries.
MAX_RESTARTS = 2
MAX_REMEMBERED_INPUTS = 200
_NAME_SAFE = re.compile(r"[^a-z0-9-]+")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def operator_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """ISSUEOPS_OPERATOR_TIMEOUT (of `environ`, default this process's environment): seconds, or a
    number with s/m/h/d (default 24 h)."""
    raw = Settings.from_env(environ).operator_timeout
    if not raw.strip():
        return DEFAULT_OPERATOR_TIMEOUT_S
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", raw)
    if not match:
        raise InvalidInput(
            f"ISSUEOPS_OPERATOR_TIMEOUT must be seconds or a number with s, m, h or d, got {raw!r}."
        )
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def request_name(repository: str | None, issue: int | None, generation: int = 1) -> str:
    """A DNS-1123 name for the request of an issue: `octo-org-models-7` (`-2` for a second one)."""
    base = _NAME_SAFE.sub("-", f"{repository or 'issue'}-{issue}".lower()).strip("-")
    suffix = f"-{generation}" if generation > 1 else ""
    if len(base) + len(suffix) > 63:
        digest = hashlib.sha1(base.encode()).hexdigest()[:6]
        base = f"{base[: 63 - len(suffix) - 7].rstrip('-')}-{digest}"
    return base + suffix


@dataclass(frozen=True)
class OperatorInput:
    """What an authorised person asked for on the issue (or in spec.operatorInput on a cluster).

    `id` makes it idempotent: the comment id, or any string that changes with each new input.
    """

    action: str  # retrain | approve | rollback | cancel | status
    id: str
    by: str | None = None
    adjusted_hyperparameters: dict[str, Any] | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InvalidInput(f"unknown action {self.action!r}; one of {', '.join(ACTIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatorInput:
        if not isinstance(data, dict) or not data.get("id"):
            raise InvalidInput("operator input needs an id and an action.")
        adjusted = data.get("adjusted_hyperparameters")
        if adjusted is not None and not isinstance(adjusted, dict):
            raise InvalidInput("adjusted_hyperparameters must be a mapping of name: value.")
        version = data.get("version")
        return cls(
            action=str(data.get("action") or "retrain"),
            id=str(data["id"]),
            by=data.get("by"),
            adjusted_hyperparameters=adjusted,
            version=None if version is None else str(version),
        )


@dataclass
class AttemptRecord:
    attempt: int
    run_id: str
    decision: str | None = None
    metric_value: float | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    status_comment_id: int | None = None
    lost_runs: list[str] = field(default_factory=list)  # runs of this attempt lost to infrastructure


@dataclass
class TrainingRequest:
    name: str
    spec: TrainingSpec
    repository: str | None = None
    issue: int | None = None
    requested_by: str | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: iso(utcnow()))
    updated_at: str | None = None
    phase: str = Phase.PENDING
    attempt: int = 0
    run_id: str | None = None
    run_handle: str | None = None
    restarts: int = 0  # of the current attempt, after its run was lost to infrastructure
    model_name: str | None = None
    model_version: str | None = None
    metric_value: float | None = None
    message: str = "Waiting for a free run slot."
    adjusted_hyperparameters: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    status_comment_id: int | None = None
    status_digest: str | None = None
    wait_deadline: str | None = None
    applied_inputs: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ views

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def effective_spec(self) -> TrainingSpec:
        """The spec the next attempt trains: the request's spec with operator adjustments merged."""
        if not self.adjusted_hyperparameters:
            return self.spec
        return self.spec.with_hyperparameters(self.adjusted_hyperparameters)

    @property
    def attempts_left(self) -> int:
        return max(self.spec.max_retry + 1 - self.attempt, 0)

    @property
    def title(self) -> str:
        target = self.spec.dataset_id or self.spec.environment
        return f"Training {self.spec.algorithm} on {target} · attempt {self.attempt}"

    def current(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRequest:
        data = dict(data)
        data["spec"] = TrainingSpec(**data["spec"])
        data["attempts"] = [AttemptRecord(**a) for a in data.get("attempts", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def status(self) -> dict[str, Any]:
        """The resource's `.status` (camelCase, as Kubernetes resources spell it)."""
        return {
            "phase": self.phase,
            "attempt": self.attempt,
            "runId": self.run_id,
            "runHandle": self.run_handle,
            "restarts": self.restarts,
            "modelName": self.model_name,
            "modelVersion": self.model_version,
            "metricValue": self.metric_value,
            "issue": (
                {"repository": self.repository, "number": self.issue} if self.issue is not None else None
            ),
            "conditions": self.conditions,
            "message": self.message,
            "adjustedHyperparameters": self.adjusted_hyperparameters or None,
            "attempts": [
                {
                    "attempt": a.attempt,
                    "runId": a.run_id,
                    "decision": a.decision,
                    "metricValue": a.metric_value,
                    "statusCommentId": a.status_comment_id,
                    "lostRuns": a.lost_runs or None,
                }
                for a in self.attempts
            ],
            "statusCommentId": self.status_comment_id,
            "statusDigest": self.status_digest,
            "waitDeadline": self.wait_deadline,
            "appliedInputs": self.applied_inputs,
            "uid": self.uid,
            "createdAt": self.created_at,
        }

    @classmethod
    def from_resource(cls, body: dict[str, Any]) -> TrainingRequest:
        """A request from a TrainingRequest resource (spec validated; status as last written)."""
        meta = body.get("metadata") or {}
        spec_doc = dict(body.get("spec") or {})
        issue = spec_doc.pop("issue", None) or {}
        for key in ("operatorInput", "requestedBy"):
            spec_doc.pop(key, None)
        spec = validate_spec(spec_doc)
        status = body.get("status") or {}
        attempts = [
            AttemptRecord(
                attempt=a.get("attempt", 0),
                run_id=a.get("runId", ""),
                decision=a.get("decision"),
                metric_value=a.get("metricValue"),
                status_comment_id=a.get("statusCommentId"),
                lost_runs=list(a.get("lostRuns") or []),
            )
            for a in status.get("attempts") or []
        ]
        return cls(
            name=meta.get("name", ""),
            spec=spec,
            repository=issue.get("repository"),
            issue=issue.get("number"),
            requested_by=(body.get("spec") or {}).get("requestedBy"),
            uid=status.get("uid") or meta.get("uid") or uuid.uuid4().hex,
            created_at=status.get("createdAt") or meta.get("creationTimestamp") or iso(utcnow()),
            phase=status.get("phase") or Phase.PENDING,
            attempt=status.get("attempt") or 0,
            run_id=status.get("runId"),
            run_handle=status.get("runHandle"),
            restarts=status.get("restarts") or 0,
            model_name=status.get("modelName"),
            model_version=status.get("modelVersion"),
            metric_value=status.get("metricValue"),
            message=status.get("message") or "Waiting for a free run slot.",
            adjusted_hyperparameters=status.get("adjustedHyperparameters") or {},
            conditions=list(status.get("conditions") or []),
            attempts=attempts,
            status_comment_id=status.get("statusCommentId"),
            status_digest=status.get("statusDigest"),
            wait_deadline=status.get("waitDeadline"),
            applied_inputs=list(status.get("appliedInputs") or []),
        )


# ---------------------------------------------------------------------- transitions


def set_condition(request: TrainingRequest, kind: str, status: bool, reason: str, message: str = "") -> None:
    """Kubernetes-style condition: one per type, its transition time kept while unchanged."""
    value = "True" if status else "False"
    now = iso(utcnow())
    for condition in request.conditions:
        if condition["type"] == kind:
            if condition["status"] != value:
                condition["lastTransitionTime"] = now
            condition.update(status=value, reason=reason, message=message)
            return
    request.conditions.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }
    )


def attempt_run_id(
    request: TrainingRequest, attempt: int, now: datetime | None = None, *, restart: int = 0
) -> str:
    """The run id of an attempt, fixed before submission so a restart never submits it twice."""
    key = f"{request.uid}:{attempt}" + (f":{restart}" if restart else "")
    return new_run_id(now, key=key)


def new_request(
    spec: TrainingSpec,
    *,
    name: str,
    repository: str | None = None,
    issue: int | None = None,
    requested_by: str | None = None,
) -> TrainingRequest:
    request = TrainingRequest(
        name=name, spec=spec, repository=repository, issue=issue, requested_by=requested_by
    )
    set_condition(request, "Accepted", True, "SpecValid", "The training spec is valid.")
    return request


def start_attempt(request: TrainingRequest, now: datetime | None = None) -> str:
    """Pending → Running: the next attempt gets its run id (recorded before anything is submitted)."""
    if request.phase != Phase.PENDING:
        raise Conflict(f"Request {request.name} is {request.phase}; only a Pending one can start.")
    spec = request.effective_spec
    request.attempt += 1
    request.run_id = attempt_run_id(request, request.attempt, now)
    request.run_handle = None
    request.restarts = 0
    request.status_comment_id = None
    request.status_digest = None
    request.wait_deadline = None
    request.phase = Phase.RUNNING
    request.message = f"Attempt {request.attempt} of {request.spec.max_retry + 1} is running."
    request.attempts.append(
        AttemptRecord(request.attempt, request.run_id, hyperparameters=dict(spec.hyperparameters))
    )
    set_condition(request, "Running", True, "AttemptSubmitted", f"run {request.run_id}")
    set_condition(request, "WaitingForOperator", False, "AttemptSubmitted")
    return request.run_id


def record_result(
    request: TrainingRequest,
    result: RunResult,
    *,
    now: datetime | None = None,
    timeout_s: float = DEFAULT_OPERATOR_TIMEOUT_S,
) -> str:
    """Running → the phase the attempt's decision leads to; returns that decision.

    pass → Succeeded; retrain → WaitingForOperator until the deadline; fail → Failed (the caller
    rolls back and then calls `rolled_back`); error → Failed with the step's explanation.
    """
    if request.phase != Phase.RUNNING or result.run_id != request.run_id:
        raise Conflict(f"Run {result.run_id} is not the running attempt of {request.name}.")
    now = now or utcnow()
    current = request.current()
    if current is not None:
        current.decision, current.metric_value = result.decision, result.metric_value
        current.status_comment_id = request.status_comment_id
    request.metric_value = result.metric_value
    request.message = result.message
    set_condition(request, "Running", False, f"Decision{result.decision.capitalize()}")
    if result.decision == Decision.PASS:
        request.phase = Phase.SUCCEEDED
        request.model_name = result.model_name or request.model_name
        request.model_version = result.model_version
        set_condition(request, "Succeeded", True, "ThresholdMet", result.message)
    elif result.decision == Decision.RETRAIN:
        request.phase = Phase.WAITING
        request.wait_deadline = iso(now + timedelta(seconds=timeout_s))
        set_condition(request, "WaitingForOperator", True, "BelowThreshold", f"until {request.wait_deadline}")
    else:
        request.phase = Phase.FAILED
        set_condition(request, "Succeeded", False, f"Decision{result.decision.capitalize()}")
    return result.decision


def restart_attempt(request: TrainingRequest, reason: str, now: datetime | None = None) -> bool:
    """The running attempt's run was lost to infrastructure: start the same attempt again as a new
    run (the operator's retries are untouched). After MAX_RESTARTS the request fails instead,
    saying why; returns whether the attempt starts again."""
    if request.phase != Phase.RUNNING or not request.run_id:
        raise Conflict(f"Request {request.name} is {request.phase}; only a running attempt restarts.")
    lost, current = request.run_id, request.current()
    if current is not None:
        current.lost_runs = [*current.lost_runs, lost]
    if request.restarts >= MAX_RESTARTS:
        times = request.restarts + 1
        run_failed(
            request,
            f"Attempt {request.attempt} was lost {times} times — {reason}; it is not started again. "
            "Comment `/retrain` to start a new request.",
        )
        return False
    request.restarts += 1
    request.run_id = attempt_run_id(request, request.attempt, now, restart=request.restarts)
    request.run_handle = None
    if current is not None:
        current.run_id = request.run_id
    request.message = (
        f"Attempt {request.attempt} of {request.spec.max_retry + 1} is running again as run "
        f"{request.run_id}: run {lost} was lost ({reason})."
    )
    set_condition(request, "Running", True, "AttemptRestarted", f"run {request.run_id} after {lost} was lost")
    return True


def run_failed(request: TrainingRequest, message: str) -> None:
    """A run that stopped without a decision (a step's error, a lost run)."""
    request.phase = Phase.FAILED
    request.message = message
    current = request.current()
    if current is not None:
        current.decision = Decision.ERROR
        current.status_comment_id = request.status_comment_id
    set_condition(request, "Running", False, "RunError", message)
    set_condition(request, "Succeeded", False, "RunError", message)


def rolled_back(request: TrainingRequest, message: str) -> None:
    request.phase = Phase.ROLLED_BACK
    request.message = message
    set_condition(request, "RolledBack", True, "AttemptsExhausted", message)


def expire(request: TrainingRequest, now: datetime | None = None) -> bool:
    """WaitingForOperator past its deadline → Failed. True when it expired now."""
    now = now or utcnow()
    if request.phase != Phase.WAITING or not request.wait_deadline:
        return False
    if now < parse_iso(request.wait_deadline):
        return False
    request.phase = Phase.FAILED
    request.message = f"No operator answer by {request.wait_deadline}; the request stopped."
    set_condition(request, "WaitingForOperator", False, "TimedOut", request.message)
    set_condition(request, "Succeeded", False, "OperatorTimeout", request.message)
    return True


def starts_new_request(latest: TrainingRequest | None, action: str | None, event_at: str | None) -> bool:
    """Whether an issue event with the training label starts a request (given the issue's latest).

    One event starts one request however it arrived (webhook or poller, each of which may also
    see it more than once): an issue without a request gets one; an active request is never
    doubled; a finished one is trained again only when a person asks for it — the label added
    again after that request was created (`event_at`, GitHub's time of the event), or `/retrain`.
    """
    if latest is None:
        return True
    if latest.active or action != "labeled" or not event_at:
        return False
    try:
        return parse_iso(event_at) > parse_iso(latest.created_at)
    except ValueError:
        return False


def cancel(request: TrainingRequest, by: str | None = None) -> None:
    if not request.active:
        raise Conflict(f"Request {request.name} is already {request.phase}; nothing to cancel.")
    request.phase = Phase.CANCELLED
    request.message = f"Cancelled{f' by {by}' if by else ''}."
    request.wait_deadline = None
    set_condition(request, "Cancelled", True, "Cancelled", request.message)


def apply_input(request: TrainingRequest, given: OperatorInput) -> bool:
    """Apply a retrain or cancel input; False when this input id was already applied.

    Invalid input raises (SpecError for hyperparameters the algorithm does not have, Conflict when
    the request is not waiting) and leaves the request exactly as it was.
    """
    if given.id in request.applied_inputs:
        return False
    if given.action == "cancel":
        cancel(request, given.by)
    elif given.action == "retrain":
        if request.phase != Phase.WAITING:
            raise Conflict(
                f"Request {request.name} is {request.phase}; new hyperparameters are taken only "
                "while it waits for the operator."
            )
        adjusted = given.adjusted_hyperparameters or {}
        if adjusted:
            merged = request.effective_spec.with_hyperparameters(adjusted)  # raises SpecError
            request.adjusted_hyperparameters = {
                **request.adjusted_hyperparameters,
                **{k: merged.hyperparameters[k] for k in _canonical(request.spec, adjusted)},
            }
        request.phase = Phase.PENDING
        request.wait_deadline = None
        who = f" from {given.by}" if given.by else ""
        request.message = (
            f"Operator input{who} accepted; attempt {request.attempt + 1} is queued."
            if adjusted
            else f"Retrain{who} with the same hyperparameters; attempt {request.attempt + 1} is queued."
        )
        set_condition(request, "WaitingForOperator", False, "OperatorAnswered", request.message)
    else:
        raise InvalidInput(f"{given.action} is not a change of the request's phase.")
    request.applied_inputs = (request.applied_inputs + [given.id])[-MAX_REMEMBERED_INPUTS:]
    return True


def _canonical(spec: TrainingSpec, adjusted: dict[str, Any]) -> list[str]:
    algo = ALGORITHMS[spec.algorithm]
    return [algo.param(str(k)).name for k in adjusted if algo.param(str(k)) is not None]


def adjustable(spec: TrainingSpec) -> list[tuple[str, str, Any]]:
    """(name, allowed values, current value) for every hyperparameter of the spec's algorithm."""
    algo = ALGORITHMS[spec.algorithm]
    return [(p.name, p.describe(), spec.hyperparameters.get(p.name, p.default)) for p in algo.params]


@contextlib.contextmanager
def counted(request: TrainingRequest, run_ended: Callable[[str], None] | None = None) -> Iterator[None]:
    """Count what the block does to `request`: the phase it reaches and each attempt's decision.
    `run_ended` hears of a run that stopped running in it (an attempt's end, a lost run), so that
    its step times and notifications are read from its record. The drivers (bridge worker,
    operator) wrap each change they store in this: the transitions stay plain functions, and a
    dry run (an input checked on a copy) counts nothing. A block that raises counts nothing.
    """
    phase, decided = request.phase, [a.decision for a in request.attempts]
    run_id = request.run_id if request.phase == Phase.RUNNING else None
    yield
    if request.phase != phase:
        metrics.count_request_phase(request.phase)
    for index, attempt in enumerate(request.attempts):
        if attempt.decision and (index >= len(decided) or decided[index] is None):
            metrics.count_attempt(attempt.decision)
    if run_id and run_ended is not None and (request.phase != Phase.RUNNING or request.run_id != run_id):
        run_ended(run_id)


def request_log_context(request: TrainingRequest) -> contextlib.AbstractContextManager[None]:
    """What is logged while a driver moves `request` names its run, issue and request (JSON logs)."""
    return log_context(
        execution_id=request.run_id,
        issue_number=request.issue,
        training_job_name=request.name,
        status=request.phase,
    )
