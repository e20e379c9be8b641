"""Moves a request forward one step at a time: submit, follow, decide, ask, roll back, time out.

The same controller serves the embedded bridge (requests in the local store) and the kopf
operator (requests as TrainingRequest resources): each call to `step` does at most one thing
that must not be repeated, and the caller saves the request before the next call. That is what
makes both restart-safe: a run id is saved before its run is submitted, and a backend asked to
submit a run id it already has returns the existing run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime

from issueops.bridge import messages
from issueops.bridge.backends import LOST, RUNNING, RunBackend
from issueops.config import Settings
from issueops.errors import Conflict, InvalidInput, IssueOpsError
from issueops.github import GitHubClient, RetryPolicy
from issueops.lifecycle.state_machine import (
    OperatorInput,
    Phase,
    TrainingRequest,
    apply_input,
    expire,
    operator_timeout_s,
    record_result,
    restart_attempt,
    rolled_back,
    run_failed,
    set_condition,
    start_attempt,
    utcnow,
)
from issueops.pipeline.runs import PIPELINE_STEPS, RunRecord, collect_result
from issueops.reporting.status import ConsoleSink, GitHubCommentSink, render_status
from issueops.results import (
    Decision,
    RunResult,
    StepStatus,
    StepTiming,
    after_rollback,
    production_after,
)
from issueops.store import open_store

log = logging.getLogger(__name__)


LOST_REASON = "its process is gone: the bridge or its machine restarted under it"


def _condition(request: TrainingRequest, kind: str) -> str | None:
    return next((c["status"] for c in request.conditions if c["type"] == kind), None)


def _decision_stands(decision: str | None, steps: list[StepTiming]) -> bool:
    """Whether a run that stopped early still decided its attempt: a retrain or fail decision
    (the request's driver asks or rolls back itself), or a pass whose version was deployed."""
    if decision in (Decision.RETRAIN, Decision.FAIL):
        return True
    return decision == Decision.PASS and any(
        s.name == "deploy" and s.status == StepStatus.DONE for s in steps
    )


class GitHubClients:
    """One GitHubClient per repository, made on first use; None where GitHub is not configured."""

    def __init__(
        self,
        settings: Settings,
        *,
        retry: RetryPolicy | None = None,
        throttle: bool = True,
    ):
        self.settings, self.retry, self.throttle = settings, retry, throttle
        self._clients: dict[str, GitHubClient] = {}

    def __call__(self, repository: str | None) -> GitHubClient | None:
        repository = repository or self.settings.github_repository
        if not repository or not self.settings.github_token:
            return None
        if repository not in self._clients:
            self._clients[repository] = GitHubClient(
                self.settings.github_token,
                repository,
                api_url=self.settings.github_api_url,
                retry=self.retry,
                throttle=self.throttle,
            )
        return self._clients[repository]


class IssueReporter:
    """A request's comments on its issue: the status comment of each attempt, edited in place,
    and new comments for questions and notices. Without an issue or a token, they are logged."""

    def __init__(self, clients: Callable[[str | None], GitHubClient | None]):
        self.clients = clients

    def _client(self, request: TrainingRequest) -> GitHubClient | None:
        return self.clients(request.repository) if request.issue is not None else None

    def show_status(self, request: TrainingRequest, body: str) -> bool:
        """Post or edit the attempt's status comment when its text changed; True when shown."""
        digest = hashlib.sha1(body.encode()).hexdigest()[:16]
        if digest == request.status_digest:
            return False
        client = self._client(request)
        if client is None:
            ConsoleSink(log).show(body, event=f"{request.name}: status")
        else:
            sink = GitHubCommentSink(client, request.issue, comment_id=request.status_comment_id)
            try:
                sink.show(body, event="status")
            except IssueOpsError as error:  # the next step tries again; a run never fails for it
                log.warning("could not update the status of %s: %s", request.name, error)
                return False
            request.status_comment_id = sink.comment_id
        request.status_digest = digest
        return True

    def post(self, request: TrainingRequest, body: str) -> None:
        """A new comment on the request's issue (raises on failure: the caller decides)."""
        client = self._client(request)
        if client is None:
            log.info("%s: %s", request.name, body)
            return
        client.post_comment(request.issue, body)


class RegistryActions:
    """The model registry calls a request needs: keep production on failure, approve, roll back.
    Production moves through issueops.registry.promotion, so the serving endpoint moves with it."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def _registry(self):
        from issueops.registry.lifecycle import Registry

        return Registry.from_settings(self.settings)

    def _production(self):
        from issueops.registry.promotion import Production

        return Production(self.settings, registry=self._registry())

    def model_name(self, request: TrainingRequest) -> str:
        if request.model_name:
            return request.model_name
        from issueops.registry.names import model_name_for

        return model_name_for(request.spec.to_dict())

    def rollback_request(self, request: TrainingRequest, reason: str) -> dict:
        """Undo what the request changed; the outcome as the pipeline's rollback step records it."""
        earlier = tuple(a.run_id for a in request.attempts if a.run_id != request.run_id)
        earlier += tuple(run for a in request.attempts for run in a.lost_runs)
        outcome = self._production().roll_back_request(
            self.model_name(request),
            request.run_id,
            reason=reason,
            actor="issueops-bridge",
            attempt_run_ids=earlier,
        )
        return outcome.to_dict()

    def production_note(self, request: TrainingRequest) -> str:
        """Which version of the request's model stays in production, or that there is none."""
        name = self.model_name(request)
        try:
            info = self._registry().production(name)
        except (IssueOpsError, ImportError) as error:
            log.warning("could not read the production version of %s: %s", name, error)
            return ""
        return production_after(name, changed=False, to_version=info.version if info else None)

    def approve(self, request: TrainingRequest, version: str | None, by: str | None) -> str:
        version = version or request.model_version
        if not version:
            raise Conflict(f"Request {request.name} has no registered version to approve.")
        done = self._production().promote(
            self.model_name(request),
            version,
            actor=by or "issueops-bridge",
            reason=f"/approve on issue #{request.issue}",
        )
        return done.message

    def rollback_to(self, request: TrainingRequest, version: str | None, by: str | None) -> str:
        outcome = self._production().roll_back(
            self.model_name(request),
            to_version=version,
            actor=by or "issueops-bridge",
            reason=f"/rollback on issue #{request.issue}" if request.issue else "/rollback",
        )
        return outcome.message


class RequestController:
    def __init__(
        self,
        settings: Settings,
        backend: RunBackend,
        reporter: IssueReporter,
        registry: RegistryActions | None = None,
        *,
        timeout_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.settings = settings
        self.backend = backend
        self.reporter = reporter
        self.registry = registry or RegistryActions(settings)
        self.timeout_s = operator_timeout_s() if timeout_s is None else timeout_s
        self.clock = clock
        self.store = open_store(settings)

    # ------------------------------------------------------------------ one step

    def step(self, request: TrainingRequest, *, may_start: bool = True) -> bool:
        """Advance `request` by one step; True when it changed (save it, then call again)."""
        if request.phase == Phase.PENDING:
            if not may_start:
                return False
            start_attempt(request, self.clock())
            return True
        if request.phase == Phase.RUNNING:
            if request.run_handle is None:
                request.run_handle = self.backend.submit(
                    request.run_id,
                    request.effective_spec,
                    attempt=request.attempt,
                    issue=request.issue,
                    repository=request.repository,
                )
                self.reporter.show_status(request, self._status_body(request))
                return True
            return self._follow(request)
        if request.phase == Phase.WAITING:
            if expire(request, self.clock()):
                request.message = f"{request.message} {self.registry.production_note(request)}".strip()
                self._notice(request, "The request timed out waiting for the operator", request.message)
                return True
            if _condition(request, "QuestionPosted") == "False":  # GitHub failed us last time
                self._ask(request, collect_result(self.store, request.run_id))
                return _condition(request, "QuestionPosted") == "True"
        return False

    def _follow(self, request: TrainingRequest) -> bool:
        state = self.backend.state(request.run_id, request.run_handle)
        if state == RUNNING:
            return self.reporter.show_status(request, self._status_body(request))
        result = collect_result(self.store, request.run_id)
        if state == LOST or result.decision == Decision.INTERRUPTED:
            judgement = RunRecord(self.store, request.run_id).read("judgement.json") or {}
            if not _decision_stands(judgement.get("decision"), result.steps):
                return self._lost(request)
            # Judged before it died: the decision stands, and what it left undone the driver does.
            result.decision, result.message = judgement["decision"], judgement.get("message", "")
        if result.decision not in (Decision.PASS, Decision.RETRAIN, Decision.FAIL):
            error = RunRecord(self.store, request.run_id).error()
            if error:
                reason = f"step {error.get('step')}: " + "; ".join(error.get("problems") or [])
            else:
                reason = "the run finished without a decision"
            run_failed(request, f"Attempt {request.attempt} failed — {reason}.")
            self.reporter.show_status(request, self._status_body(request, state="Failed"))
            self._notice(request, f"Attempt {request.attempt} failed", request.message)
            return True
        decision = record_result(request, result, now=self.clock(), timeout_s=self.timeout_s)
        self.reporter.show_status(request, self._status_body(request, result))
        if decision == Decision.RETRAIN:
            self._ask(request, result)
        elif decision == Decision.FAIL:
            self._finish_failed(request, result)
        return True

    def _lost(self, request: TrainingRequest) -> bool:
        """The run died with its process (a pod restart, kill -9): the attempt starts again as a
        new run, without using one of the operator's retries, or fails once restarts run out."""
        lost = request.run_id
        if restart_attempt(request, LOST_REASON, self.clock()):
            log.warning("%s: run %s was lost; attempt %d starts again", request.name, lost, request.attempt)
            self.reporter.show_status(request, self._status_body(request))
            return True
        self.reporter.show_status(request, self._status_body(request, state="Interrupted"))
        self._notice(request, f"Attempt {request.attempt} failed", request.message)
        return True

    def _ask(self, request: TrainingRequest, result: RunResult) -> None:
        """Post the question to the operator; remembered, so a failed post is tried again."""
        try:
            self.reporter.post(request, messages.question(request, result, timeout_s=self.timeout_s))
        except IssueOpsError as error:
            log.warning("could not ask the operator on %s: %s", request.name, error)
            set_condition(request, "QuestionPosted", False, "GitHubFailed", str(error))
        else:
            set_condition(request, "QuestionPosted", True, "Posted")

    def _finish_failed(self, request: TrainingRequest, result: RunResult) -> None:
        """Attempts exhausted: production stays as it was before the request, then say so."""
        record = RunRecord(self.store, request.run_id)
        done = record.read("rollback.json")  # the pipeline's fail branch rolls back itself
        if done is None:
            try:
                done = self.registry.rollback_request(request, result.message)
            except IssueOpsError as error:
                request.message = f"{result.message} Rollback failed: {error}"
                set_condition(request, "RolledBack", False, "RollbackFailed", str(error))
                self._notice(request, "Training failed and the rollback did not complete", request.message)
                return
            except ImportError:
                done = {"model": self.registry.model_name(request), "changed": False}
        detail = after_rollback({"model": self.registry.model_name(request), **done})
        message = f"{result.message} {detail}".strip()
        if done.get("changed"):
            rolled_back(request, message)
            title = "Training failed; production rolled back"
        else:  # nothing of this request reached production: nothing was rolled back
            request.message = message
            set_condition(request, "RolledBack", False, "NothingToRollBack", detail)
            title = "Training failed; production unchanged"
        if record.read("notify-training_failed.json") is None:
            self._notice(request, title, request.message)

    # ------------------------------------------------------------------ operator input

    def apply(self, request: TrainingRequest, given: OperatorInput) -> str | None:
        """Apply an authorised input; returns a reply for the issue, or None when nothing to say.

        Raises SpecError / Conflict / InvalidInput for input that cannot apply; the request is
        then unchanged.
        """
        if given.action in ("retrain", "cancel"):
            was_running = request.phase == Phase.RUNNING
            if not apply_input(request, given):
                return None
            if given.action == "cancel":
                if was_running and request.run_id:
                    self.backend.cancel(request.run_id, request.run_handle)
                self._notice(request, "Request cancelled", request.message)
            return None
        if given.action == "status":
            return messages.status_reply(request)
        if given.id in request.applied_inputs:
            return None
        if given.action == "approve":
            if request.phase != Phase.SUCCEEDED:
                raise Conflict(f"Request {request.name} is {request.phase}; nothing to approve yet.")
            reply = self.registry.approve(request, given.version, given.by)
            set_condition(request, "Approved", True, "ApprovedOnIssue", f"by {given.by}")
        elif given.action == "rollback":
            if request.active:
                raise Conflict(f"Request {request.name} is {request.phase}; `/cancel` it first, or wait.")
            reply = self.registry.rollback_to(request, given.version, given.by)
            rolled_back(request, reply)
        else:  # pragma: no cover - OperatorInput checks the action
            raise InvalidInput(f"unknown action {given.action}")
        request.applied_inputs = request.applied_inputs + [given.id]
        return messages.plain_reply(reply)

    # ------------------------------------------------------------------ comments

    def _status_body(
        self, request: TrainingRequest, result: RunResult | None = None, *, state: str | None = None
    ) -> str:
        """The attempt's status comment; `state` ends it without a result (Failed, Interrupted)."""
        steps = RunRecord(self.store, request.run_id).steps() if request.run_id else []
        if state is not None:  # the run is over: a step it left running will not finish
            steps = [
                StepTiming(s.name, StepStatus.INTERRUPTED, s.seconds) if s.status.startswith("running") else s
                for s in steps
            ]
        seen = {s.name for s in steps}
        steps += [StepTiming(name, StepStatus.PENDING) for name in PIPELINE_STEPS if name not in seen]
        current = request.current()
        lost = [run for run in (current.lost_runs if current else []) if run != request.run_id]
        note = None
        if lost:
            runs = ", ".join(f"`{run}`" for run in lost)
            note = (
                f"Run{'s' if len(lost) > 1 else ''} {runs} of this attempt {'were' if len(lost) > 1 else 'was'} "
                f"lost ({LOST_REASON}); the attempt started again."
            )
        if state == "Interrupted":
            note = request.message
        return render_status(
            request.title, steps, result=result, run_id=request.run_id, state=state, note=note
        )

    def _post(self, request: TrainingRequest, body: str) -> None:
        try:
            self.reporter.post(request, body)
        except IssueOpsError as error:
            log.warning("could not comment on the issue of %s: %s", request.name, error)

    def _notice(self, request: TrainingRequest, title: str, message: str) -> None:
        self._post(request, messages.notice(title, message, request))
