"""Retraining triggers of every production model: `issueops monitor check`.

Three kinds, each judged on the traffic of the version in production:

  drift        the last `drift_windows` complete windows of `drift_window` (aligned to UTC
               multiples of it: with 24 h, calendar days) all drift; a window with too few rows
               breaks the run
  performance  the registered metric on labelled traffic of the last `performance_window` is worse
               than at registration by more than `tolerance` (a classifier without enough labels:
               the CBPE estimate, counted only when calibrated)
  schedule     the spec's `retrain_every` has passed since the version went to production

Nothing fires during `cooldown` after a version goes to production, and drift counts only windows
that start after it did: a retrain (a new production version) restarts every clock.

A trigger that starts firing opens one proposal (proposals.py): a GitHub issue when GitHub is
configured, else a file in the store that is also printed. While it keeps firing, the issue gets a
comment at most every `remind_every`; when it stops, a comment says so. What was decided is kept in
monitoring/<model>/triggers.json (trigger_state.py), written whole after each check; the verdicts
themselves come from trigger_checks.py. GitHub stays the judge of "is there an issue already" (its marker is looked up before
every open), so a lost or stale state file never opens a second issue; one check at a time (the
CronJob's concurrencyPolicy: Forbid).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from issueops.errors import IssueOpsError, NotFound
from issueops.github import GitHubClient
from issueops.store import ObjectStore

from .inference_log import read_inference_log
from .proposals import (
    ExportedWindow,
    Proposal,
    attach_plots,
    export_window,
    find_proposal_issue,
    open_proposal_issue,
    proposals_prefix,
    proposed_spec,
    render_body,
    render_update,
    said_time,
    store_proposal,
    window_dataset_id,
)
from .trigger_checks import (  # noqa: F401 - CheckReport, duration: re-exported, the names callers know
    CheckContext,
    CheckReport,
    ModelCheck,
    TriggerPolicy,
    TriggerResult,
    duration,
    evaluate_triggers,
    production_model,
    read_context,
    slice_log,
)
from .trigger_state import Action, TriggerKind, TriggerState, iso_time, load_state, parse_time, save_state

log = logging.getLogger("issueops.monitoring")


@dataclass
class _Acting:
    store: ObjectStore
    github: GitHubClient | None
    policy: TriggerPolicy
    now: datetime
    branch: str


def _proposal(result: TriggerResult, context: CheckContext, acting: _Acting) -> Proposal:
    """Export the data the trigger rests on and render what the proposal says."""
    production = context.production
    window: ExportedWindow | None = None
    spec = production.spec
    learning = (spec or {}).get("learning_type")
    if spec is not None and learning != "reinforcement" and context.log is not None:
        since, until = result.since or production.since, result.until or acting.now
        data = context.log
        if context.log.since is not None and since < context.log.since:  # a schedule reaching further back
            data = read_inference_log(
                acting.store,
                production.model,
                production.version,
                since=since,
                until=until,
                feature_columns=context.profile.feature_columns,
            )
        data = slice_log(data, since, until)
        window = export_window(
            acting.store,
            data,
            context.labels,
            dataset_id=window_dataset_id(production.model, result.kind, acting.now),
            target=production.target,
            supervised=learning == "supervised",
        )
    proposed, problems = (None, [])
    if spec is not None:
        proposed, problems = proposed_spec(spec, production.model, window)
    titles = {
        TriggerKind.DRIFT: f"drift persisted over {acting.policy.drift_windows} windows",
        TriggerKind.PERFORMANCE: f"{result.details.get('metric', 'the metric')} degraded",
        TriggerKind.SCHEDULE: f"scheduled (retrain_every {result.details.get('retrain_every')})",
    }
    stem = f"{acting.now:%Y%m%dT%H%M%S}-{result.kind}"
    plots = attach_plots(
        acting.github,
        acting.store,
        result.plots,
        folder=f"{proposals_prefix(production.model)}/{stem}",
        branch=acting.branch,
    )
    return Proposal(
        model=production.model,
        trigger=result.kind,
        version=production.version,
        title=f"Retrain {production.model}: {titles[result.kind]}",
        summary=result.summary,
        evidence=result.evidence,
        production_since=said_time(production.since),
        spec=proposed,
        spec_problems=problems,
        window=window,
        plots=plots,
        policy=acting.policy.describe(),
        checked_at=said_time(acting.now),
    )


def _act(
    result: TriggerResult, kind_state: TriggerState, context: CheckContext, acting: _Acting, check: ModelCheck
) -> None:
    """One proposal per firing episode, reminders while it lasts, a word when it ends."""
    if result.firing:
        if not kind_state.firing or kind_state.pending or (acting.github and kind_state.issue is None):
            _propose(result, kind_state, context, acting, check)
        else:
            _remind(result, kind_state, context, acting)
        if not kind_state.firing:
            kind_state.since = iso_time(acting.now)
        kind_state.firing, kind_state.summary = True, result.summary
    elif kind_state.firing:
        _resolve(result, kind_state, context, acting)


def _propose(
    result: TriggerResult, kind_state: TriggerState, context: CheckContext, acting: _Acting, check: ModelCheck
) -> None:
    """A new episode: export its data and open the issue (or find the one still open and comment on
    it); without GitHub, or when GitHub keeps failing, the proposal goes to the store."""
    proposal = _proposal(result, context, acting)
    body = render_body(proposal)
    github, now = acting.github, acting.now
    kind_state.last_reported = iso_time(now)
    if github is not None:
        try:
            issue, opened = open_proposal_issue(github, proposal, body)
            if not opened:
                data = (
                    f" Its data is exported as dataset `{proposal.window.dataset_id}`."
                    if proposal.window
                    else ""
                )
                _comment(github, issue.number, context.production.model, result, "Firing again.", data)
        except IssueOpsError as error:
            result.error = f"{error}; the proposal is in the store, and the next check opens the issue"
        else:
            result.action = Action.OPENED if opened else Action.COMMENTED
            result.issue, result.issue_url = issue.number, issue.html_url
            kind_state.issue, kind_state.issue_url, kind_state.pending = issue.number, issue.html_url, False
            return
    key = store_proposal(acting.store, proposal, body, now)
    check.proposals.append(body)
    result.action, result.proposal = Action.STORED, key
    kind_state.proposal, kind_state.pending = key, github is not None


def _remind(result: TriggerResult, kind_state: TriggerState, context: CheckContext, acting: _Acting) -> None:
    """Still firing: a comment on the open issue at most every remind_every. A closed issue was
    declined: nothing is said until the trigger stops and fires again."""
    result.issue, result.issue_url, result.proposal = (
        kind_state.issue,
        kind_state.issue_url,
        kind_state.proposal,
    )
    if acting.github is None:
        return  # the episode's proposal is in the store already
    try:
        existing = find_proposal_issue(acting.github, context.production.model, result.kind)
    except IssueOpsError as error:
        result.action, result.error = Action.FAILED, str(error)
        return
    if existing is None:
        result.summary += f" (Issue #{kind_state.issue} was closed: declined until the trigger fires again.)"
        return
    last = parse_time(kind_state.last_reported)
    if last is not None and acting.now - last < acting.policy.remind_every:
        return
    try:
        _comment(
            acting.github, existing.number, context.production.model, result, "Still firing.", evidence=False
        )
    except IssueOpsError as error:
        result.action, result.error = Action.FAILED, str(error)
        return
    result.action, kind_state.last_reported = Action.COMMENTED, iso_time(acting.now)


def _resolve(result: TriggerResult, kind_state: TriggerState, context: CheckContext, acting: _Acting) -> None:
    """It stopped firing: say so on the issue (or beside the store proposal)."""
    result.issue, result.issue_url, result.proposal = (
        kind_state.issue,
        kind_state.issue_url,
        kind_state.proposal,
    )
    if acting.github is not None and kind_state.issue is not None and not kind_state.pending:
        text = render_update(
            context.production.model,
            result.kind,
            "Resolved:",
            f"{result.summary} Close this issue unless a retrain is still wanted.",
        )
        try:
            acting.github.post_comment(kind_state.issue, text)
        except IssueOpsError as error:
            result.action, result.error = Action.FAILED, str(error)
            return  # still firing in the state: the next check says it again
    elif kind_state.proposal:
        acting.store.put_bytes(
            kind_state.proposal.removesuffix(".md") + ".resolved.md",
            f"Resolved at {said_time(acting.now)}: {result.summary}\n".encode(),
        )
    result.action = Action.RESOLVED
    kind_state.firing, kind_state.pending, kind_state.summary = False, False, result.summary
    kind_state.last_reported = iso_time(acting.now)


def _comment(
    github: GitHubClient,
    issue: int,
    model: str,
    result: TriggerResult,
    headline: str,
    extra: str = "",
    *,
    evidence: bool = True,
) -> None:
    text = render_update(
        model, result.kind, headline, result.summary + extra, result.evidence if evidence else ""
    )
    github.post_comment(issue, text)


def check_model(
    store: ObjectStore,
    registry,
    model: str,
    version: int,
    *,
    policy: TriggerPolicy,
    now: datetime,
    github: GitHubClient | None = None,
    act: bool = False,
    branch: str = "main",
) -> ModelCheck:
    """Evaluate one production model's triggers and, with `act`, open, remind or resolve its
    proposals; its state is saved either way (drift verdicts of complete windows, production)."""
    production = production_model(store, registry, model, version)
    state = load_state(store, model)
    check = ModelCheck(model, version, said_time(production.since), [])
    if state.version != version:
        check.notes.append(
            f"Version {version} is in production"
            + (f" (after version {state.version})" if state.version is not None else "")
            + f" since {said_time(production.since)}; its triggers start from there."
        )
    state.version, state.production_since = version, iso_time(production.since)
    with tempfile.TemporaryDirectory(prefix="issueops-check-") as tmp:
        context = read_context(store, production, policy, now, Path(tmp))
        if context.why_no_data:
            check.notes.append(context.why_no_data)
        check.triggers = evaluate_triggers(context, state, policy, now)
        acting = _Acting(store, github, policy, now, branch)
        for result in check.triggers:
            kind_state = state.trigger(result.kind)
            if not act:
                if result.firing and not kind_state.firing:
                    result.action = Action.WOULD_OPEN
                result.issue, result.proposal = kind_state.issue, kind_state.proposal
                continue
            _act(result, kind_state, context, acting, check)
    state.checked_at = iso_time(now)
    save_state(store, state)
    return check


def check_triggers(
    store: ObjectStore,
    registry,
    *,
    policy: TriggerPolicy | None = None,
    github: GitHubClient | None = None,
    act: bool = False,
    now: datetime | None = None,
    branch: str = "main",
    models: list[str] | None = None,
) -> CheckReport:
    """`issueops monitor check`: every production model's triggers (or those of `models`)."""
    policy = policy or TriggerPolicy()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    production = registry.production_versions()
    report = CheckReport(iso_time(now), [])
    missing = [m for m in models or () if m not in production]
    if missing:
        raise NotFound(f"Model {missing[0]} has no production version: there is nothing to check.")
    for model in sorted(models or production):
        try:
            check = check_model(
                store, registry, model, production[model], policy=policy, now=now, github=github, act=act,
                branch=branch,
            )  # fmt: skip
        except IssueOpsError as error:  # the store, MLflow: one model's trouble stops no other check
            report.errors.append(f"{model}: {error}")
            continue
        report.models.append(check)
        report.errors += [f"{model} {t.kind}: {t.error}" for t in check.triggers if t.error]
    return report
