"""The bridge's worker: queued deliveries become requests and operator input; requests move on.

`Bridge.handle` decides what one delivery means (authorising its sender through the collaborator
permission API or the allowlist, replying on the issue when it cannot act). Where requests live
is a `RequestBook`: `LocalBook` keeps them under ISSUEOPS_HOME and runs them through the local
runner (embedded default); `issueops.bridge.kube.KubernetesBook` creates and patches
TrainingRequest resources for the operator (cluster mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from issueops.bridge import messages
from issueops.bridge.controller import RequestController
from issueops.bridge.events import APPROVE_RETRAIN, TRAIN_LABEL, Intent, interpret, read_adjusted
from issueops.bridge.inbox import DONE, FAILED, Delivery, Inbox
from issueops.bridge.reader import read_document, read_payload
from issueops.config import Settings
from issueops.errors import Conflict, ExternalServiceError, InvalidInput, IssueOpsError, NotFound
from issueops.github import GitHubClient
from issueops.lifecycle.request_store import RequestStore
from issueops.lifecycle.state_machine import (
    OperatorInput,
    Phase,
    TrainingRequest,
    counted,
    new_request,
    request_log_context,
    run_failed,
    starts_new_request,
)
from issueops.monitoring import metrics
from issueops.monitoring.proposal_ref import APPROVE_COMMAND, PROPOSAL_LABEL, check_proposal_spec
from issueops.pipeline.runs import observe_run
from issueops.spec.body import TrainingSpec, validate_spec

log = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 10
MAX_STEPS_PER_TICK = 8


def running_limit(settings: Settings) -> int:
    """ISSUEOPS_MAX_RUNNING, checked: a whole number of attempts, at least 1."""
    raw = settings.max_running
    try:
        value = int(raw) if raw.strip() else DEFAULT_MAX_RUNNING
    except ValueError:
        raise InvalidInput(f"ISSUEOPS_MAX_RUNNING must be a whole number, got {raw!r}.") from None
    if value < 1:
        raise InvalidInput("ISSUEOPS_MAX_RUNNING must be at least 1.")
    return value


class RequestBook(Protocol):
    """Where requests live: the embedded store, or TrainingRequest resources on a cluster."""

    def find(self, repository: str, issue: int) -> TrainingRequest | None: ...

    def check(self, spec: TrainingSpec) -> None: ...

    def create(
        self, spec: TrainingSpec, *, repository: str, issue: int, requested_by: str
    ) -> TrainingRequest: ...

    def apply(self, request: TrainingRequest, given: OperatorInput) -> str | None: ...

    def tick(self) -> None: ...


class LocalBook:
    """Embedded mode: requests under ISSUEOPS_HOME/requests, attempts on the local runner."""

    def __init__(
        self,
        settings: Settings,
        store: RequestStore,
        controller: RequestController,
        *,
        max_running: int = DEFAULT_MAX_RUNNING,
    ):
        self.settings, self.store, self.controller = settings, store, controller
        self.max_running = max_running
        settings.home.mkdir(parents=True, exist_ok=True)
        self._tick_file = open(settings.home / "bridge.tick.lock", "a")  # noqa: SIM115 - held for life

    def find(self, repository: str, issue: int) -> TrainingRequest | None:
        return self.store.for_issue(repository, issue)

    def check(self, spec: TrainingSpec) -> None:
        """The dataset (or environment) must exist before a request is accepted."""
        from issueops.pipeline.execution import preflight

        preflight(spec, self.settings, self.controller.store)

    def create(self, spec, *, repository, issue, requested_by) -> TrainingRequest:
        request = new_request(
            spec,
            name=self.store.next_name(repository, issue),
            repository=repository,
            issue=issue,
            requested_by=requested_by,
        )
        self.store.save(request)
        metrics.count_request_phase(request.phase)
        return request

    def apply(self, request: TrainingRequest, given: OperatorInput) -> str | None:
        # Counted once the change is saved: counting nothing when the save fails.
        with contextlib.ExitStack() as saved:
            with self.store.editing(request.name) as fresh:
                saved.enter_context(counted(fresh, self._run_ended))
                return self.controller.apply(fresh, given)

    def _run_ended(self, run_id: str) -> None:
        observe_run(self.controller.store, run_id)

    def tick(self) -> None:
        """Move the active requests on, one bridge process at a time per home (`bridge serve` and
        a `bridge poll --once` from cron may share one); another process's turn is skipped."""
        try:
            fcntl.flock(self._tick_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        try:
            self._tick()
        finally:
            fcntl.flock(self._tick_file, fcntl.LOCK_UN)

    def _tick(self) -> None:
        """Move every active request as far as it can go now, oldest first, within the run limit."""
        active = self.store.active()
        running = sum(1 for r in active if r.phase == Phase.RUNNING)
        for request in active:
            running = self._move(request, running)
        metrics.set_queue_depth(sum(1 for r in active if r.phase == Phase.PENDING))

    def _move(self, request: TrainingRequest, running: int) -> int:
        """Steps of one request, each saved (and counted) before the next; returns the run count."""
        for _ in range(MAX_STEPS_PER_TICK):
            was_running = request.phase == Phase.RUNNING
            with request_log_context(request), counted(request, self._run_ended):
                try:
                    changed = self.controller.step(request, may_start=running < self.max_running)
                except ExternalServiceError as error:
                    if error.transient:
                        log.warning("%s: %s; trying again shortly", request.name, error)
                        return running
                    run_failed(request, str(error))
                    changed = True
                except IssueOpsError as error:
                    run_failed(request, str(error))
                    changed = True
                if changed:
                    self.store.save(request)
            if not changed:
                return running
            running += int(request.phase == Phase.RUNNING) - int(was_running)
        return running


class Bridge:
    def __init__(
        self,
        book: RequestBook,
        inbox: Inbox,
        github: Callable[[str | None], GitHubClient | None],
        *,
        allowlist: frozenset[str] = frozenset(),
        label: str = TRAIN_LABEL,
        repository: str | None = None,
        retry_seconds: float = 5.0,
    ):
        self.book, self.inbox, self.github = book, inbox, github
        self.allowlist = frozenset(a.lower() for a in allowlist)
        self.label = label
        self.repository = repository
        self.retry_seconds = retry_seconds

    # ------------------------------------------------------------------ the loop

    def run_once(self) -> None:
        for delivery in self.inbox.queued(decode=read_payload):
            if not self.inbox.take(delivery.id):  # another bridge process on this home has it
                continue
            try:
                note = self.handle(delivery)
            except ExternalServiceError as error:
                if error.transient or error.status in (403, 429):
                    wait = getattr(error, "retry_after", None) or self.retry_seconds
                    log.warning("delivery %s: %s; retrying in %.0f s", delivery.id, error, wait)
                    self.inbox.retry_later(delivery.id, wait, str(error))
                    continue
                self.inbox.finish(delivery.id, FAILED, str(error))
            except IssueOpsError as error:
                self.inbox.finish(delivery.id, FAILED, str(error))
            except Exception as error:  # a bug of ours must not stop the queue
                log.exception("delivery %s could not be handled", delivery.id)
                self.inbox.finish(delivery.id, FAILED, f"{type(error).__name__}: {error}")
            else:
                log.info("delivery %s: %s", delivery.id, note)
                self.inbox.finish(delivery.id, DONE, note)
        self.inbox.checkpoint()
        self.book.tick()

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep serving; the next round tries again
                log.exception("bridge round failed")
            self.inbox.wake.wait(interval)
            self.inbox.wake.clear()

    def start(self, interval: float = 1.0) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run_forever, args=(stop, interval), name="bridge-worker", daemon=True
        )
        thread.start()
        return thread, stop

    # ------------------------------------------------------------------ one delivery

    def handle(self, delivery: Delivery) -> str:
        intent = interpret(delivery.event, delivery.payload, label=self.label)
        if intent.kind == "ignore":
            return intent.reason
        if self.repository and intent.repository.lower() != self.repository.lower():
            return f"{intent.repository} is not the configured repository"
        if intent.kind == "request":
            return self._request(intent, delivery)
        return self._input(intent, delivery)

    def _request(self, intent: Intent, delivery: Delivery) -> str:
        """A new request from the issue body, when the training label's event starts one."""
        existing = self.book.find(intent.repository, intent.issue)
        action, issue = delivery.payload.get("action"), delivery.payload.get("issue") or {}
        if not starts_new_request(existing, action, issue.get("updated_at")):
            return f"issue #{intent.issue} already has {existing.phase} request {existing.name}"
        client = self.github(intent.repository)
        if not self._may_steer(client, intent.sender):
            self._deny(client, intent, "start training with the label")
            return f"{intent.sender} may not start training"
        return self._create(client, intent)

    def _create(self, client: GitHubClient | None, intent: Intent) -> str:
        """A new request from `intent.body`; the caller has checked that the sender may steer."""
        try:  # read only now that the sender may steer, and in the reader's process
            spec = validate_spec(read_document(intent.body), check_inputs=self.book.check)
            check_proposal_spec(intent.body, spec.model_name)  # a proposal retrains its own model
        except InvalidInput as error:
            self._reply(client, intent.issue, messages.spec_rejected(error.problems))
            return "spec rejected: " + "; ".join(error.problems)
        request = self.book.create(
            spec, repository=intent.repository, issue=intent.issue, requested_by=intent.sender
        )
        self.inbox.wake.set()
        return f"request {request.name} created"

    def _input(self, intent: Intent, delivery: Delivery) -> str:
        # One comment is handled once, whether the webhook or the poller brought it.
        if intent.comment_id and not self.inbox.claim(
            f"comment:{intent.repository.lower()}:{intent.comment_id}", delivery.id
        ):
            return f"comment {intent.comment_id} was already handled"
        if intent.action == APPROVE_RETRAIN:
            return self._approve_retrain(intent, delivery)
        request = self.book.find(intent.repository, intent.issue)
        client = self.github(intent.repository)
        if request is None:
            if self._may_steer(client, intent.sender):
                self._reply(client, intent.issue, messages.no_request(intent.action, self.label))
            return f"issue #{intent.issue} has no training request"
        if not self._may_steer(client, intent.sender):
            self._deny(client, intent, f"use /{intent.action} or steer a run")
            return f"{intent.sender} may not steer"
        intent = read_adjusted(intent, extract=read_document)  # only for someone who may steer
        if intent.problems:
            self._reply(client, intent.issue, messages.input_rejected(request, intent.problems))
            return "input rejected: " + "; ".join(intent.problems)
        if intent.action == "retrain" and not intent.adjusted and not request.active:
            # A finished request is trained again because a person asked: a new request from
            # the issue body as it is now (max_retry starts afresh).
            body = (delivery.payload.get("issue") or {}).get("body") or ""
            return self._create(client, replace(intent, kind="request", body=body))
        given = OperatorInput(
            action=intent.action,
            id=f"comment-{intent.comment_id}",
            by=intent.sender,
            adjusted_hyperparameters=intent.adjusted,
            version=intent.version,
        )
        try:
            reply = self.book.apply(request, given)
        except (Conflict, NotFound) as error:
            self._reply(client, intent.issue, messages.plain_reply(str(error)))
            return f"/{intent.action} refused: {error}"
        except InvalidInput as error:
            self._reply(client, intent.issue, messages.input_rejected(request, error.problems))
            return "input rejected: " + "; ".join(error.problems)
        if reply:
            self._reply(client, intent.issue, reply)
        self.inbox.wake.set()
        return f"/{intent.action} applied to {request.name}"

    def _approve_retrain(self, intent: Intent, delivery: Delivery) -> str:
        """A retraining proposal approved: one request from the spec in its body, made as the
        `mlops:train` label makes one, so that the label added later starts no second one."""
        client = self.github(intent.repository)
        if PROPOSAL_LABEL not in intent.labels:
            if self._may_steer(client, intent.sender):  # as for other commands: strangers get silence
                self._reply(client, intent.issue, messages.not_a_proposal(APPROVE_COMMAND, PROPOSAL_LABEL))
            return f"issue #{intent.issue} is not a retraining proposal"
        if not self._may_steer(client, intent.sender):
            self._deny(client, replace(intent, kind="request"), f"use {APPROVE_COMMAND}")
            return f"{intent.sender} may not approve retraining"
        issue = delivery.payload.get("issue") or {}
        if issue.get("state") == "closed":  # a closed proposal was declined, as the label path reads it
            self._reply(client, intent.issue, messages.proposal_closed(APPROVE_COMMAND))
            return f"issue #{intent.issue} is a closed proposal"
        existing = self.book.find(intent.repository, intent.issue)
        if existing is not None:
            self._reply(client, intent.issue, messages.proposal_already_approved(APPROVE_COMMAND, existing))
            return f"issue #{intent.issue} already has {existing.phase} request {existing.name}"
        return self._create(client, replace(intent, kind="request", body=issue.get("body") or ""))

    # ------------------------------------------------------------------ authorisation and replies

    def _may_steer(self, client: GitHubClient | None, user: str) -> bool:
        if user.lower() in self.allowlist:
            return True
        if client is None or not user:
            return False
        return client.can_steer(user, self.allowlist)

    def _deny(self, client: GitHubClient | None, intent: Intent, what: str) -> None:
        key = f"denied:{intent.repository}:{intent.issue}:{intent.sender.lower()}"
        if self.inbox.get(key):  # one explanation per person and issue, not one per attempt
            return
        started = intent.kind == "request"
        self._reply(client, intent.issue, messages.not_allowed(intent.sender, what, started=started))
        self.inbox.put(key, "1")

    def _reply(self, client: GitHubClient | None, issue: int, body: str) -> None:
        if client is None:
            log.info("issue #%s: %s", issue, body)
            return
        client.post_comment(issue, body)
