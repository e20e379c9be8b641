"""The verdict of each retraining trigger (drift, performance, schedule) on the traffic of a
production version, and the policy they are judged by; triggers.py acts on the verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from issueops.errors import InvalidInput, NotFound
from issueops.store import ObjectStore

from .drift import MIN_ROWS, DriftReport, WindowTooSmall, aligned, check_drift, plot_drift
from .inference_log import InferenceLog, read_inference_log
from .performance import MIN_LABELLED_ROWS, PerformanceReport, check_performance, read_feedback
from .profile import ReferenceProfile, load_reference_profile, predicted_values
from .proposals import said_time
from .trigger_state import Action, ModelState, TriggerKind, WindowVerdict, iso_time, parse_time

MAX_EVIDENCE_FEATURES = 40  # rows of the per-feature table in an issue


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
            since = parse_time(record.time)
            break
    since = since or parse_time(info.created_at) or datetime.now(UTC)
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
        data["since"], data["until"] = iso_time(self.since), iso_time(self.until)
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
class CheckContext:
    """What one model's check has read once and every trigger uses."""

    production: ProductionModel
    profile: ReferenceProfile | None
    log: InferenceLog | None
    labels: pd.DataFrame
    why_no_data: str  # a sentence when profile or log is missing
    plots_dir: Path


def read_context(
    store: ObjectStore, production: ProductionModel, policy: TriggerPolicy, now: datetime, plots_dir: Path
) -> CheckContext:
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
    return CheckContext(production, profile, log_, labels, why, plots_dir)


def evaluate_drift(
    context: CheckContext, state: ModelState, policy: TriggerPolicy, now: datetime
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
        key = f"{production.version}/{iso_time(start)}/{iso_time(end)}"
        last = index == len(bounds) - 1
        if key in state.windows and not last:
            verdicts.append(state.windows[key])
            continue
        window = slice_log(context.log, start, end)
        try:
            report = check_drift(context.profile, window, min_rows=policy.min_rows)
        except WindowTooSmall:
            verdict = WindowVerdict(
                production.version, iso_time(start), iso_time(end), window.rows, None,
                note=f"{window.rows} rows, fewer than the {policy.min_rows} a verdict needs",
            )  # fmt: skip
        else:
            verdict = WindowVerdict(
                production.version, iso_time(start), iso_time(end), report.rows, report.drift, report.drift_share,
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


def _drift_plots(context: CheckContext, report: DriftReport, window: InferenceLog) -> list[str]:
    """Reference against current for the drifted features (and the predictions, if they drift)."""
    drifted = replace(report, features=[f for f in report.features if f.drift][:5])
    if drifted.prediction is not None and not drifted.prediction.drift:
        drifted.prediction = None
    reference, current = aligned(context.profile, window)
    predicted = predicted_values(window.outputs, context.profile.task_type, context.profile.classes)
    return plot_drift(
        drifted, reference, current, context.plots_dir, predicted=predicted, profile=context.profile
    )


def evaluate_performance(context: CheckContext, policy: TriggerPolicy, now: datetime) -> TriggerResult:
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
            details={"retrain_every": every, "due": iso_time(due)},
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
        details={"retrain_every": every, "due": iso_time(due)},
    )


def evaluate_triggers(
    context: CheckContext, state: ModelState, policy: TriggerPolicy, now: datetime
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
