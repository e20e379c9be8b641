"""Operator input from outside the issue (the MCP server): the bridge's requests listed, and
answered with the issue commands' own rules and rights.

An answer (adjusted hyperparameters or a plain retrain, approve, cancel) goes through the bridge's
handling of a comment, `RequestController.apply` on the stored request (as `LocalBook.apply`): the
same transitions, checks and refusals, and the same replies on the request's issue. It is made in the name of
ISSUEOPS_ACTOR, a GitHub login, who may answer where that login could steer on the issue: on
ISSUEOPS_ALLOWLIST, or with write, maintain or admin access to the request's repository, asked of
GitHub when GITHUB_TOKEN is set. Without either nobody may, and the refusal says what to set. The
bridge serving this ISSUEOPS_HOME starts the attempt an answer queues.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from issueops.config import Settings
from issueops.errors import InvalidInput, Unauthorized
from issueops.github import GitHubClient
from issueops.lifecycle.request_store import RequestStore
from issueops.lifecycle.state_machine import PHASES, AttemptRecord, OperatorInput, TrainingRequest, adjustable

ANSWERS = ("retrain", "approve", "cancel")


@dataclass
class Adjustable:
    """A hyperparameter an answer may set: its allowed values and the value the next attempt uses."""

    name: str
    allowed: str
    current: Any


@dataclass
class RequestView:
    """A training request as an operator answering it needs to see it."""

    name: str
    phase: str
    repository: str | None
    issue: int | None
    requested_by: str | None
    algorithm: str
    evaluation_metric: str
    evaluation_threshold: float | None
    attempt: int
    attempts_left: int
    message: str
    run_id: str | None = None
    metric_value: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    wait_deadline: str | None = None
    adjusted_hyperparameters: dict[str, Any] = field(default_factory=dict)
    adjustable: list[Adjustable] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    reply: str | None = None  # what an answer said on the issue, if anything

    @classmethod
    def of(cls, request: TrainingRequest) -> RequestView:
        spec = request.effective_spec
        return cls(
            name=request.name,
            phase=request.phase,
            repository=request.repository,
            issue=request.issue,
            requested_by=request.requested_by,
            algorithm=spec.algorithm,
            evaluation_metric=spec.evaluation_metric,
            evaluation_threshold=spec.evaluation_threshold,
            attempt=request.attempt,
            attempts_left=request.attempts_left,
            message=request.message,
            run_id=request.run_id,
            metric_value=request.metric_value,
            model_name=request.model_name,
            model_version=request.model_version,
            wait_deadline=request.wait_deadline,
            adjusted_hyperparameters=dict(request.adjusted_hyperparameters),
            adjustable=[Adjustable(*row) for row in adjustable(spec)],
            attempts=list(request.attempts),
        )


def list_requests(settings: Settings, phase: str | None = None) -> list[RequestView]:
    """The requests under ISSUEOPS_HOME/requests, oldest first; only those in `phase` when given."""
    if phase is not None and phase not in PHASES:
        raise InvalidInput(f"{phase!r} is not a phase; one of {', '.join(PHASES)}.")
    return [RequestView.of(r) for r in RequestStore(settings.home).all() if phase in (None, r.phase)]


def may_steer(client: GitHubClient | None, user: str, allowlist: frozenset[str]) -> bool:
    """The issue commands' rule (as `Bridge._may_steer`): on the allowlist, or write access on GitHub."""
    if user.lower() in allowlist:
        return True
    return client is not None and bool(user) and client.can_steer(user, allowlist)


def answer_request(
    settings: Settings,
    name: str,
    action: str,
    *,
    adjusted_hyperparameters: dict[str, Any] | None = None,
    version: int | None = None,
    github: Callable[[str | None], GitHubClient | None] | None = None,
    allowlist: frozenset[str] | None = None,
    backend=None,
) -> RequestView:
    """Apply an answer to request `name` in ISSUEOPS_ACTOR's name; the request as it is afterwards.
    Unauthorized when the actor may not steer; the bridge's own errors (SpecError, Conflict,
    NotFound) when the answer cannot apply, and then nothing changed."""
    from issueops.bridge.backends import LocalRunBackend
    from issueops.bridge.controller import GitHubClients, IssueReporter, RequestController

    if action not in ANSWERS:
        raise InvalidInput(f"{action!r} is not an answer; one of {', '.join(ANSWERS)}.")
    if adjusted_hyperparameters and action != "retrain":
        raise InvalidInput(f"adjusted_hyperparameters go with retrain, not with {action}.")
    actor = (settings.actor or "").strip()
    if not actor:
        raise Unauthorized(
            "Set ISSUEOPS_ACTOR to your GitHub login: an answer is made in someone's name, with the rights "
            "that login has on the request's issue. Nothing was changed."
        )
    store = RequestStore(settings.home)
    request = store.load(name)
    github = github or GitHubClients(settings)
    client = github(request.repository) if request.repository else None
    allowlist = (
        Settings.from_env().allowlist if allowlist is None else frozenset(a.lower() for a in allowlist)
    )
    if not may_steer(client, actor, allowlist):
        where = (
            f"write, maintain or admin access to {request.repository}"
            if client is not None
            else "GitHub configured (GITHUB_TOKEN) to check their access"
        )
        raise Unauthorized(
            f"{actor} may not answer {name}: only people on ISSUEOPS_ALLOWLIST, or with {where}, can steer "
            "a run. Nothing was changed."
        )
    given = OperatorInput(
        action=action,
        id=f"mcp-{uuid.uuid4().hex}",
        by=actor,
        adjusted_hyperparameters=adjusted_hyperparameters or None,
        version=None if version is None else str(version),
    )
    reporter = IssueReporter(github)
    controller = RequestController(settings, backend or LocalRunBackend(settings), reporter)
    with store.editing(name) as answered:  # as LocalBook.apply: saved only when it applies
        reply = controller.apply(answered, given)
    if reply:
        reporter.post(answered, reply)
    view = RequestView.of(answered)
    view.reply = reply
    return view
