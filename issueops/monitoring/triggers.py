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
monitoring/<model>/triggers.json (the production version and since when, the drift verdict of each
complete window, and per trigger whether it fires and where its proposal is), written whole after
each check. GitHub stays the judge of "is there an issue already" (its marker is looked up before
every open), so a lost or stale state file never opens a second issue; one check at a time (the
CronJob's concurrencyPolicy: Forbid).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from issueops.errors import InvalidInput, IssueOpsError, NotFound
from issueops.github import GitHubClient
from issueops.store import ObjectStore

from .drift import MIN_ROWS, DriftReport, WindowTooSmall, aligned, check_drift, plot_drift
from .payloads import MONITORING_PREFIX, InferenceLog, read_inference_log
from .performance import MIN_LABELLED_ROWS, PerformanceReport, check_performance, read_feedback
from .profile import ReferenceProfile, load_reference_profile, predicted_values
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

log = logging.getLogger("issueops.monitoring")

STATE_FILE = "triggers.json"
STATE_FORMAT = 1
KEPT_WINDOWS = 60  # drift verdicts kept per model (older ones are never looked at again)
MAX_EVIDENCE_FEATURES = 40  # rows of the per-feature table in an issue


class TriggerKind(StrEnum):
    DRIFT = "drift"
    PERFORMANCE = "performance"
    SCHEDULE = "schedule"


class Action(StrEnum):
    NONE = "none"
    WOULD_OPEN = "would-open"  # firing, but --open-issues was not given
    OPENED = "opened"
    STORED = "stored"  # proposal written to the store (no GitHub, or GitHub failed)
    COMMENTED = "commented"  # still firing, or firing again on an issue that is still open
    RESOLVED = "resolved"
    FAILED = "failed"  # GitHub failed for a comment; the next check tries again


@dataclass(frozen=True)
class TriggerPolicy:
    """How the triggers judge; the CLI flags of `issueops monitor check` set these."""

    drift_window: timedelta = timedelta(hours=24)
    drift_windows: int = 3
    min_rows: int = MIN_ROWS
    performance_window: timedelta = timedelta(days=7)
    tolerance: float = 0.02
    min_labelled: int = MIN_LABELLED_ROWS
    cooldown: timedelta = timedelta(hours=24)
    remind_every: timedelta = timedelta(hours=24)
    settle: timedelta = timedelta(minutes=5)  # a window is judged this long after its end (late logs)

    def describe(self) -> str:
        return (
            f"Triggers: drift in {self.drift_windows} consecutive windows of {duration(self.drift_window)} "
            f"(at least {self.min_rows} rows each); performance over {duration(self.performance_window)} "
            f"worse than registered by more than {self.tolerance:g}; the spec's retrain_every; "
            f"cooldown {duration(self.cooldown)} after a version goes to production."
        )


def duration(value: timedelta) -> str:
    """12h, 3d, 90m: the settings as the flags take them and the sentences say them."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= (2 * size if unit == "d" else size) and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------- state in the store


@dataclass
class WindowVerdict:
    """The drift verdict of one complete window of a version's traffic."""

    version: int
    start: str
    end: str
    rows: int
    drift: bool | None  # None: too few rows to judge
    drift_share: float | None = None
    drifted_features: int = 0
    features: int = 0
    note: str = ""


@dataclass
class TriggerState:
    firing: bool = False
    since: str | None = None  # when this episode started firing
    last_reported: str | None = None
    issue: int | None = None
    issue_url: str | None = None
    proposal: str | None = None  # store key of the proposal file
    pending: bool = False  # firing, but its issue could not be opened yet
    summary: str = ""


@dataclass
class ModelState:
    """monitoring/<model>/triggers.json."""

    model: str
    version: int | None = None
    production_since: str | None = None
    checked_at: str | None = None
    drift_share: float | None = None  # of the latest complete window (for a gauge)
    windows: dict[str, WindowVerdict] = field(default_factory=dict)  # "<version>/<start>/<end>"
    triggers: dict[str, TriggerState] = field(default_factory=dict)
    format: int = STATE_FORMAT

    def trigger(self, kind: str) -> TriggerState:
        return self.triggers.setdefault(kind, TriggerState())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def state_key(model: str) -> str:
    return f"{MONITORING_PREFIX}/{model}/{STATE_FILE}"


def load_state(store: ObjectStore, model: str) -> ModelState:
    """The model's trigger state; a fresh one when there is none or it cannot be read (GitHub's
    markers still keep a second issue from opening)."""
    key = state_key(model)
    try:
        data = json.loads(store.get_bytes(key))
        return ModelState(
            model=model,
            version=data.get("version"),
            production_since=data.get("production_since"),
            checked_at=data.get("checked_at"),
            drift_share=data.get("drift_share"),
            windows={k: WindowVerdict(**v) for k, v in (data.get("windows") or {}).items()},
            triggers={k: TriggerState(**v) for k, v in (data.get("triggers") or {}).items()},
        )
    except NotFound:
        return ModelState(model)
    except (ValueError, TypeError, AttributeError) as error:
        log.warning("%s cannot be read (%s); starting from a fresh state", key, error)
        return ModelState(model)


def save_state(store: ObjectStore, state: ModelState) -> None:
    """One object written whole (a put replaces it at once, on S3 and on disk)."""
    newest = sorted(state.windows.items(), key=lambda item: item[1].start)[-KEPT_WINDOWS:]
    state.windows = dict(newest)
    store.put_bytes(state_key(state.model), state.to_json().encode())


# ---------------------------------------------------------------------- the production version


@dataclass
class ProductionModel:
    """A model's production version and what its triggers need to know about it."""

    model: str
    version: int
    since: datetime  # when it went to production
    spec: dict[str, Any] | None  # the spec it was trained with (runs/<run_id>/request.json)
    run_id: str | None
    metrics: dict[str, float]  # as registered
    target: str | None  # the label column it was trained on


def production_model(store: ObjectStore, registry, model: str, version: int) -> ProductionModel:
    """What the registry and the run's record say about a production version."""
    from issueops.pipeline.runs import RunRecord

    info = registry.version(model, version)
    since = None
    for record in reversed(registry.history(model)):
        if record.to_version == version and record.action in ("promote", "rollback"):
            since = _parse(record.time)
            break
    since = since or _parse(info.created_at) or datetime.now(UTC)
    spec, target = None, None
    if info.run_id:
        request = RunRecord(store, info.run_id).read("request.json") or {}
        spec = request.get("spec") if isinstance(request.get("spec"), dict) else None
        metadata_key = f"processed/{info.run_id}/metadata.json"
        if store.exists(metadata_key):
            target = json.loads(store.get_bytes(metadata_key)).get("target")
    if spec is not None:
        target = target or spec.get("target")
    return ProductionModel(model, version, since, spec, info.run_id, dict(info.metrics), target)


# ---------------------------------------------------------------------- evaluation


@dataclass
class TriggerResult:
    """One trigger's verdict at a check, and what the check did about it."""

    kind: str
    firing: bool
    summary: str  # one sentence
    evidence: str = ""  # markdown
    since: datetime | None = None  # the data the verdict rests on (what a proposal exports)
    until: datetime | None = None
    plots: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    action: str = Action.NONE
    issue: int | None = None
    issue_url: str | None = None
    proposal: str | None = None  # store key
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "plots"}  # files of the check's temp folder
        data["since"], data["until"] = _iso(self.since), _iso(self.until)
        return data


@dataclass
class ModelCheck:
    model: str
    version: int
    production_since: str
    triggers: list[TriggerResult]
    notes: list[str] = field(default_factory=list)
    proposals: list[str] = field(default_factory=list)  # bodies written to the store (printed)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "triggers"}
        data["triggers"] = [t.to_dict() for t in self.triggers]
        return data


@dataclass
class CheckReport:
    checked_at: str
    models: list[ModelCheck]
    errors: list[str] = field(default_factory=list)  # GitHub trouble: proposals kept in the store

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at,
            "models": [m.to_dict() for m in self.models],
            "errors": self.errors,
        }


def window_bounds(now: datetime, policy: TriggerPolicy) -> list[tuple[datetime, datetime]]:
    """The last `drift_windows` complete windows before `now`, oldest first, aligned to UTC
    multiples of the window length."""
    size = policy.drift_window.total_seconds()
    last_end = math.floor((now - policy.settle).timestamp() / size) * size
    ends = [last_end - i * size for i in range(policy.drift_windows)][::-1]
    return [(datetime.fromtimestamp(end - size, UTC), datetime.fromtimestamp(end, UTC)) for end in ends]


def slice_log(log: InferenceLog, since: datetime, until: datetime) -> InferenceLog:
    """The rows of `log` logged in [since, until)."""
    times = log.keys["time"]
    mask = ((times >= pd.Timestamp(since)) & (times < pd.Timestamp(until))).to_numpy()
    return replace(
        log,
        keys=log.keys[mask].reset_index(drop=True),
        features=log.features[mask].reset_index(drop=True),
        outputs={name: array[mask] for name, array in log.outputs.items()},
        since=since,
        until=until,
    )


@dataclass
class _Context:
    """What one model's check has read once and every trigger uses."""

    production: ProductionModel
    profile: ReferenceProfile | None
    log: InferenceLog | None
    labels: pd.DataFrame
    why_no_data: str  # a sentence when profile or log is missing
    plots_dir: Path


def _read_context(
    store: ObjectStore, production: ProductionModel, policy: TriggerPolicy, now: datetime, plots_dir: Path
) -> _Context:
    profile, log_, why = None, None, ""
    try:
        profile = load_reference_profile(store, production.model, production.version)
    except (NotFound, InvalidInput) as error:
        why = str(error)
    if profile is not None:
        # The first drift window starts up to one window length before N lengths back.
        reach = max(
            policy.drift_window * (policy.drift_windows + 1) + policy.settle, policy.performance_window
        )
        since = max(production.since, now - reach)
        try:
            log_ = read_inference_log(
                store,
                production.model,
                production.version,
                since=since,
                until=now,
                feature_columns=profile.feature_columns,
            )
        except NotFound as error:  # NeverServed
            why = str(error)
    labels = read_feedback(store, production.model) if log_ is not None else pd.DataFrame()
    return _Context(production, profile, log_, labels, why, plots_dir)


def evaluate_drift(
    context: _Context, state: ModelState, policy: TriggerPolicy, now: datetime
) -> TriggerResult:
    """Drift in every one of the last N complete windows of the version's traffic."""
    production, n = context.production, policy.drift_windows
    size = duration(policy.drift_window)
    if context.log is None:
        return TriggerResult(TriggerKind.DRIFT, False, f"Not checked: {context.why_no_data}")
    bounds = [(s, e) for s, e in window_bounds(now, policy) if s >= production.since]
    if len(bounds) < n:
        ready = production.since + policy.drift_window * (n + 1) + policy.settle
        return TriggerResult(
            TriggerKind.DRIFT,
            False,
            f"Version {production.version} has {len(bounds)} complete window(s) of {size} since it went to "
            f"production; drift is judged over {n}, from about {said_time(ready)}.",
        )
    verdicts: list[WindowVerdict] = []
    latest: DriftReport | None = None
    for index, (start, end) in enumerate(bounds):
        key = f"{production.version}/{_iso(start)}/{_iso(end)}"
        last = index == len(bounds) - 1
        if key in state.windows and not last:
            verdicts.append(state.windows[key])
            continue
        window = slice_log(context.log, start, end)
        try:
            report = check_drift(context.profile, window, min_rows=policy.min_rows)
        except WindowTooSmall:
            verdict = WindowVerdict(
                production.version, _iso(start), _iso(end), window.rows, None,
                note=f"{window.rows} rows, fewer than the {policy.min_rows} a verdict needs",
            )  # fmt: skip
        else:
            verdict = WindowVerdict(
                production.version, _iso(start), _iso(end), report.rows, report.drift, report.drift_share,
                report.drifted_features, len(report.features),
            )  # fmt: skip
            if last:
                latest, latest_window = report, window
        state.windows[key] = verdict
        verdicts.append(verdict)
    state.drift_share = verdicts[-1].drift_share
    firing = all(v.drift is True for v in verdicts)
    if firing:
        shares = ", ".join(f"{v.drift_share:.2f}" for v in verdicts)
        summary = (
            f"Drift persisted over the last {n} windows of {size} (drift shares {shares}; a window drifts "
            f"when at least {latest.drift_share_threshold:g} of its features do)."
        )
    else:
        said = ", ".join(
            "too few rows"
            if v.drift is None
            else f"{'drift' if v.drift else 'no drift'} ({v.drift_share:.2f})"
            for v in verdicts
        )
        summary = f"No persistent drift: the last {n} windows of {size} show {said}."
    result = TriggerResult(
        TriggerKind.DRIFT,
        firing,
        summary,
        evidence=_drift_evidence(verdicts, latest),
        since=bounds[0][0],
        until=bounds[-1][1],
        details={"windows": [asdict(v) for v in verdicts]},
    )
    if firing and latest is not None:
        result.plots = _drift_plots(context, latest, latest_window)
    return result


def _drift_evidence(verdicts: list[WindowVerdict], latest: DriftReport | None) -> str:
    lines = ["| window (UTC) | rows | drifted features | drift share | verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        verdict = "too few rows" if v.drift is None else ("**drift**" if v.drift else "no drift")
        share = "—" if v.drift_share is None else f"{v.drift_share:.2f}"
        lines.append(
            f"| {v.start[:16].replace('T', ' ')} – {v.end[:16].replace('T', ' ')} | {v.rows} | "
            f"{v.drifted_features} of {v.features} | {share} | {verdict} |"
        )
    if latest is None:
        return "\n".join(lines)
    report = latest
    if len(report.features) > MAX_EVIDENCE_FEATURES:  # the drifted ones first
        kept = sorted(report.features, key=lambda f: not f.drift)[:MAX_EVIDENCE_FEATURES]
        report = replace(report, features=kept)
    more = len(latest.features) - len(report.features)
    table = report.to_markdown() + (f"\n\n({more} features without drift left out.)" if more > 0 else "")
    return "\n\n".join(["\n".join(lines), f"Latest window: {latest.summary()}", table])


def _drift_plots(context: _Context, report: DriftReport, window: InferenceLog) -> list[str]:
    """Reference against current for the drifted features (and the predictions, if they drift)."""
    drifted = replace(report, features=[f for f in report.features if f.drift][:5])
    if drifted.prediction is not None and not drifted.prediction.drift:
        drifted.prediction = None
    reference, current = aligned(context.profile, window)
    predicted = predicted_values(window.outputs, context.profile.task_type, context.profile.classes)
    return plot_drift(
        drifted, reference, current, context.plots_dir, predicted=predicted, profile=context.profile
    )


def evaluate_performance(context: _Context, policy: TriggerPolicy, now: datetime) -> TriggerResult:
    """The registered metric on labelled traffic (or a calibrated estimate) against registration."""
    production = context.production
    if context.log is None:
        return TriggerResult(TriggerKind.PERFORMANCE, False, f"Not checked: {context.why_no_data}")
    since = max(production.since, now - policy.performance_window)
    window = slice_log(context.log, since, now)
    try:
        report = check_performance(
            context.profile,
            window,
            context.labels,
            registered_metrics=production.metrics,
            tolerance=policy.tolerance,
            min_labelled=policy.min_labelled,
            min_rows=policy.min_rows,
        )
    except InvalidInput as error:  # WindowTooSmall, no probabilities to estimate from
        return TriggerResult(TriggerKind.PERFORMANCE, False, f"Not judged: {error}", since=since, until=now)
    # An estimate from uncalibrated probabilities is too rough to ask for a retrain.
    trusted = not report.estimated or report.method.startswith("CBPE estimate, probabilities calibrated")
    firing = bool(report.degraded) and trusted
    summary = report.summary()
    if report.degraded and not trusted:
        summary += " The estimate is not calibrated, so it does not trigger a retrain on its own."
    return TriggerResult(
        TriggerKind.PERFORMANCE,
        firing,
        summary,
        evidence=_performance_evidence(report),
        since=since,
        until=now,
        details=report.to_dict(),
    )


def _performance_evidence(report: PerformanceReport) -> str:
    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.4g}"

    basis = (
        f"{report.labelled_rows} labelled rows" if not report.estimated else f"{report.rows} rows (estimate)"
    )
    return "\n".join(
        [
            "| metric | registered | production traffic | change | tolerance | based on |",
            "|---|---|---|---|---|---|",
            f"| {report.metric} | {number(report.registered)} | {number(report.value)} | "
            f"{number(report.delta)} | {report.tolerance:g} | {basis} |",
            "",
            f"{report.method}." + (f" {report.note}" if report.note else ""),
        ]
    )


def evaluate_schedule(production: ProductionModel, now: datetime) -> TriggerResult:
    """The spec's retrain_every has passed since the version went to production."""
    from issueops.spec.body import retrain_every_seconds

    every = (production.spec or {}).get("retrain_every")
    seconds = retrain_every_seconds(every)
    if seconds is None:
        return TriggerResult(TriggerKind.SCHEDULE, False, "The spec sets no retrain_every.")
    due = production.since + timedelta(seconds=seconds)
    age = duration(timedelta(seconds=int((now - production.since).total_seconds()) // 3600 * 3600))
    if now < due:
        return TriggerResult(
            TriggerKind.SCHEDULE,
            False,
            f"retrain_every is {every}: a retrain is due at {said_time(due)}.",
            details={"retrain_every": every, "due": _iso(due)},
        )
    return TriggerResult(
        TriggerKind.SCHEDULE,
        True,
        f"The spec asks for a retrain every {every}, and version {production.version} has been in "
        f"production for {age} (due at {said_time(due)}).",
        evidence=(
            "| retrain_every | in production since | due |\n|---|---|---|\n"
            f"| {every} | {said_time(production.since)} | {said_time(due)} |"
        ),
        since=max(production.since, now - timedelta(seconds=seconds)),
        until=now,
        details={"retrain_every": every, "due": _iso(due)},
    )


def evaluate_triggers(
    context: _Context, state: ModelState, policy: TriggerPolicy, now: datetime
) -> list[TriggerResult]:
    """Every trigger of the model; none fires during the cooldown after the version went live."""
    production = context.production
    results = [
        evaluate_drift(context, state, policy, now),
        evaluate_performance(context, policy, now),
        evaluate_schedule(production, now),
    ]
    cooling = production.since + policy.cooldown
    if now < cooling:
        note = (
            f" (Version {production.version} went to production at {said_time(production.since)}; nothing fires "
            f"in the cooldown until {said_time(cooling)}.)"
        )
        for result in results:
            if result.firing:
                result.firing = False
                result.summary += note
    return results


# ---------------------------------------------------------------------- acting on the verdicts


@dataclass
class _Acting:
    store: ObjectStore
    github: GitHubClient | None
    policy: TriggerPolicy
    now: datetime
    branch: str


def _proposal(result: TriggerResult, context: _Context, acting: _Acting) -> Proposal:
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
    result: TriggerResult, kind_state: TriggerState, context: _Context, acting: _Acting, check: ModelCheck
) -> None:
    """One proposal per firing episode, reminders while it lasts, a word when it ends."""
    if result.firing:
        if not kind_state.firing or kind_state.pending or (acting.github and kind_state.issue is None):
            _propose(result, kind_state, context, acting, check)
        else:
            _remind(result, kind_state, context, acting)
        if not kind_state.firing:
            kind_state.since = _iso(acting.now)
        kind_state.firing, kind_state.summary = True, result.summary
    elif kind_state.firing:
        _resolve(result, kind_state, context, acting)


def _propose(
    result: TriggerResult, kind_state: TriggerState, context: _Context, acting: _Acting, check: ModelCheck
) -> None:
    """A new episode: export its data and open the issue (or find the one still open and comment on
    it); without GitHub, or when GitHub keeps failing, the proposal goes to the store."""
    proposal = _proposal(result, context, acting)
    body = render_body(proposal)
    github, now = acting.github, acting.now
    kind_state.last_reported = _iso(now)
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


def _remind(result: TriggerResult, kind_state: TriggerState, context: _Context, acting: _Acting) -> None:
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
    last = _parse(kind_state.last_reported)
    if last is not None and acting.now - last < acting.policy.remind_every:
        return
    try:
        _comment(
            acting.github, existing.number, context.production.model, result, "Still firing.", evidence=False
        )
    except IssueOpsError as error:
        result.action, result.error = Action.FAILED, str(error)
        return
    result.action, kind_state.last_reported = Action.COMMENTED, _iso(acting.now)


def _resolve(result: TriggerResult, kind_state: TriggerState, context: _Context, acting: _Acting) -> None:
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
    kind_state.last_reported = _iso(acting.now)


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
    state.version, state.production_since = version, _iso(production.since)
    with tempfile.TemporaryDirectory(prefix="issueops-check-") as tmp:
        context = _read_context(store, production, policy, now, Path(tmp))
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
    state.checked_at = _iso(now)
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
    report = CheckReport(_iso(now), [])
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
