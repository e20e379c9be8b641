"""The controller applied to TrainingRequest resources: what the kopf operator's handlers call.

Everything here takes a resource body and returns the `.status` to write (or raises ours:
InvalidInput for a spec that can never run, ExternalServiceError(transient) for trouble worth
retrying); the handlers translate those into kopf's PermanentError and TemporaryError. Each call
moves a request by at most one step, and the status written after it is the record a restarted
operator resumes from: the run id is in the status before its run is submitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from issueops.bridge import messages
from issueops.bridge.backends import backend_from_env
from issueops.bridge.controller import GitHubClients, IssueReporter, RequestController
from issueops.bridge.service import running_limit
from issueops.config import Settings
from issueops.errors import Conflict, InvalidInput, IssueOpsError, NotFound
from issueops.lifecycle.state_machine import (
    OperatorInput,
    Phase,
    TrainingRequest,
    counted,
    request_log_context,
    set_condition,
)
from issueops.monitoring import metrics
from issueops.pipeline.runs import observe_run

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


def resource_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Admission:
    """At most `limit` attempts run at once; pending requests start in creation order.

    `phases` is the operator's index of every request: key → (phase, creationTimestamp). A
    request admitted here counts as running until the index shows it is no longer Pending, so
    two timers firing together cannot both take the last slot.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._claimed: set[Key] = set()
        self._lock = threading.Lock()

    def may_start(self, key: Key, phases: Mapping[Key, tuple[str, str]]) -> bool:
        with self._lock:
            self._claimed = {
                k for k in self._claimed if phases.get(k, (Phase.PENDING, ""))[0] == Phase.PENDING
            }
            running = {k for k, (phase, _) in phases.items() if phase == Phase.RUNNING} | self._claimed
            if key in running:
                return True
            free = self.limit - len(running)
            if free <= 0:
                return False
            queue = sorted(
                (created, k)
                for k, (phase, created) in phases.items()
                if phase == Phase.PENDING and k not in self._claimed
            )
            ahead = [k for _, k in queue]
            position = ahead.index(key) if key in ahead else len(ahead)
            if position >= free:
                return False
            self._claimed.add(key)
            return True

    def waiting(self, phases: Mapping[Key, tuple[str, str]]) -> int:
        """Pending requests that no free slot is left for now."""
        with self._lock:
            running = sum(1 for phase, _ in phases.values() if phase == Phase.RUNNING) + len(self._claimed)
            pending = sum(
                1 for k, (phase, _) in phases.items() if phase == Phase.PENDING and k not in self._claimed
            )
            return max(0, pending - max(0, self.limit - running))

    def release(self, key: Key) -> None:
        with self._lock:
            self._claimed.discard(key)


def flatten_index(index: Mapping[Key, Iterable[tuple[str, str]]]) -> dict[Key, tuple[str, str]]:
    """kopf's Index maps each key to a store of values; ours has one value per key."""
    return {key: value for key, values in index.items() for value in values}


@dataclass
class OperatorRuntime:
    controller: RequestController
    admission: Admission

    @classmethod
    def from_env(cls, *, local: bool | None = None) -> OperatorRuntime:
        """KFP at ISSUEOPS_KFP_HOST, or the local runner with ISSUEOPS_OPERATOR_LOCAL=1."""
        settings = Settings.from_env()
        settings.home.mkdir(parents=True, exist_ok=True)
        backend = backend_from_env(settings, local=local)
        reporter = IssueReporter(GitHubClients(settings, throttle=settings.github_throttle))
        controller = RequestController(settings, backend, reporter)
        return cls(controller, Admission(running_limit(settings)))

    def request(self, body: Mapping[str, Any]) -> TrainingRequest:
        """The request a resource describes; InvalidInput when its spec can never run."""
        return TrainingRequest.from_resource(dict(body))

    def accept(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """On create: validate and start as Pending (a resource seen again keeps its status)."""
        request = self.request(body)
        if (body.get("status") or {}).get("phase"):
            return request.status()
        set_condition(request, "Accepted", True, "SpecValid", "The training spec is valid.")
        metrics.count_request_phase(request.phase)
        return request.status()

    def rejected(self, body: Mapping[str, Any], error: IssueOpsError) -> dict[str, Any]:
        """The status of a resource whose spec is invalid: Failed, with every problem named."""
        message = "Invalid spec: " + "; ".join(error.problems)
        metrics.count_request_phase(Phase.FAILED)
        return {
            "phase": Phase.FAILED,
            "message": message,
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": message,
                }
            ],
        }

    def step(self, body: Mapping[str, Any], index: Mapping) -> dict[str, Any] | None:
        """One step of an active request; the new status, or None when nothing changed."""
        request = self.request(body)
        if not request.active:
            return None
        key, phases = resource_key(body), flatten_index(index)
        with request_log_context(request), counted(request, self._run_ended):
            may_start = request.phase != Phase.PENDING or self.admission.may_start(key, phases)
            metrics.set_queue_depth(self.admission.waiting(phases))
            if request.phase == Phase.PENDING and not may_start:
                message = "Queued: the run limit is reached; this request starts when a slot frees."
                if request.message != message:
                    request.message = message
                    return request.status()
                return None
            changed = self.controller.step(request, may_start=may_start)
            return request.status() if changed else None

    def _run_ended(self, run_id: str) -> None:
        observe_run(self.controller.store, run_id)

    def operator_input(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """spec.operatorInput changed: apply it once, or explain on the issue why not."""
        request = self.request(body)
        raw = (body.get("spec") or {}).get("operatorInput")
        if not raw:
            return None
        try:
            given = OperatorInput.from_dict(raw)
            with request_log_context(request), counted(request, self._run_ended):
                reply = self.controller.apply(request, given)
        except (Conflict, InvalidInput, NotFound) as error:
            set_condition(request, "InputAccepted", False, "Rejected", str(error))
            request.message = f"Operator input not applied: {error}"
            body_text = (
                messages.plain_reply(str(error))
                if isinstance(error, Conflict | NotFound)
                else messages.input_rejected(request, error.problems)
            )
            self._post(request, body_text)
            return request.status()
        set_condition(request, "InputAccepted", True, "Applied", f"{given.action} from {given.by}")
        if reply:
            self._post(request, reply)
        return request.status()

    def cancel(self, body: Mapping[str, Any]) -> None:
        """The resource is being deleted: stop its run, if one is going."""
        key = resource_key(body)
        self.admission.release(key)
        status = body.get("status") or {}
        if status.get("phase") == Phase.RUNNING and status.get("runId"):
            self.controller.backend.cancel(status["runId"], status.get("runHandle"))

    def _post(self, request: TrainingRequest, text: str) -> None:
        try:
            self.controller.reporter.post(request, text)
        except IssueOpsError as error:
            log.warning("could not comment on the issue of %s: %s", request.name, error)
