"""One status comment per request, edited in place as the run moves.

`StatusReport` keeps the step checklist and hands the rendered markdown to a sink: the
GitHub sink posts one comment and then edits that same comment; the console sink logs.
The question to the operator after a retrain is a comment of its own, which the bridge posts
(bridge/messages.py). Rendering is done by pure functions, so what the user reads is tested without any server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from issueops.errors import IssueOpsError
from issueops.github import GitHubClient
from issueops.results import (
    Decision,
    RunResult,
    StepStatus,
    StepTiming,
    format_seconds,
    production_score,
)
from issueops.results import format_value as results_format_value

log = logging.getLogger(__name__)

STATUS_MARKER = "<!-- issueops:status -->"
QUESTION_MARKER = "<!-- issueops:question -->"
DECISION_BADGES = {
    Decision.PASS: "✅ pass",
    Decision.RETRAIN: "🔁 retrain",
    Decision.FAIL: "❌ fail",
    Decision.ERROR: "⚠️ error",
}


# ---------------------------------------------------------------------- rendering (pure)


def format_value(value: object) -> str:
    """A value in a markdown table cell: numbers by the one formatter, text kept inside the cell."""
    return cell(value) if isinstance(value, str) else results_format_value(value)


def cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_step(step: StepTiming) -> str:
    """`- [x] prepare_data (1.2 s)` for a finished step, `- [ ] train` for one still to come."""
    took = f" ({format_seconds(step.seconds)})" if step.seconds is not None else ""
    if step.status == StepStatus.DONE:
        return f"- [x] {step.name}{took}"
    if step.status == StepStatus.RUNNING:
        return f"- [ ] {step.name} — running…"
    if step.status.startswith("running: "):  # live progress, e.g. an RL iteration
        return f"- [ ] {step.name} — {cell(step.status.removeprefix('running: '))}"
    if step.status == StepStatus.FAILED:
        return f"- [ ] {step.name} — **failed**{took}"
    if step.status == StepStatus.SKIPPED:
        return f"- [ ] ~~{step.name}~~ — skipped"
    if step.status == StepStatus.INTERRUPTED:
        return f"- [ ] {step.name} — **interrupted**"
    return f"- [ ] {step.name}"


def render_checklist(steps: Sequence[StepTiming]) -> str:
    return "\n".join(render_step(step) for step in steps)


def render_result_table(result: RunResult) -> str:
    """The judgement as one table: metric, threshold, value, production's value on the same data
    (when a version is in production), decision."""
    decision = DECISION_BADGES.get(result.decision, cell(result.decision))
    production = production_score(result.champion)
    if production is None:
        return "\n".join(
            [
                "| metric | threshold | value | decision |",
                "|---|---|---|---|",
                f"| {cell(result.evaluation_metric)} | {format_value(result.threshold)} "
                f"| {format_value(result.metric_value)} | {decision} |",
            ]
        )
    return "\n".join(
        [
            f"| metric | threshold | value | {production[0]} | decision |",
            "|---|---|---|---|---|",
            f"| {cell(result.evaluation_metric)} | {format_value(result.threshold)} "
            f"| {format_value(result.metric_value)} | {production[1]} | {decision} |",
        ]
    )


def result_links(result: RunResult, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Links worth following from a run: the endpoint, the history file, then any extra ones."""
    links: dict[str, str] = {}
    if result.endpoint:
        served = ""
        if result.served_version:
            served = f" (serving version {result.served_version})"
        elif result.awaiting_approval:
            served = " (no version in production yet)"
        links[f"endpoint{served}"] = result.endpoint
    if result.history_path:
        links["history"] = result.history_path
    links.update(extra or {})
    return links


def render_links(links: Mapping[str, str]) -> str:
    return "\n".join(f"- {name}: {_link(url)}" for name, url in links.items())


def _link(url: str) -> str:
    return f"[{url}]({url})" if url.startswith(("http://", "https://")) else f"`{url}`"


def render_status(
    title: str,
    steps: Sequence[StepTiming],
    *,
    result: RunResult | None = None,
    links: Mapping[str, str] | None = None,
    run_id: str | None = None,
    state: str | None = None,
    note: str | None = None,
) -> str:
    """The body of the status comment: title, state line, checklist, then result and links.

    `state` replaces the state line the steps imply (an attempt that ended without a result);
    `note` is said under it (why this run is not the attempt's first, say)."""
    if state is not None:
        state = f"**{state}**"
    elif result is not None:
        state = f"**Finished** — {DECISION_BADGES.get(result.decision, result.decision)}"
    elif any(step.status == StepStatus.FAILED for step in steps):
        state = "**Failed**"
    elif any(step.status in (StepStatus.RUNNING, StepStatus.DONE) for step in steps):
        state = "**Running**"
    else:
        state = "**Queued**"
    run = f" · run `{run_id}`" if run_id else ""
    parts = [STATUS_MARKER, f"### {title}", f"{state}{run}"]
    if note:
        parts.append(note)
    parts.append(render_checklist(steps))
    if result is not None:
        parts.append(render_result_table(result))
        if result.message:
            parts.append("\n".join(f"> {line}" for line in result.message.splitlines()))
        if approval := result.approval_note():
            parts.append(f"⏳ **{approval}**")
    all_links = result_links(result, links) if result is not None else dict(links or {})
    if all_links:
        parts.append(render_links(all_links))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------- sinks


class StatusSink(Protocol):
    """Where a status report goes: `show` replaces the one status message."""

    def show(self, body: str, *, event: str) -> None: ...


class GitHubCommentSink:
    """The status as one issue comment: posted once, then edited in place."""

    def __init__(self, client: GitHubClient, issue: int, *, comment_id: int | None = None):
        self.client = client
        self.issue = issue
        # Given an id (a restarted operator, a second attempt), the same comment is edited.
        self.comment_id = comment_id
        self.comment_url: str | None = None

    def show(self, body: str, *, event: str) -> None:
        if self.comment_id is None:
            self.comment_id, self.comment_url = self.client.post_comment(self.issue, body)
        else:
            self.client.edit_comment(self.comment_id, body)


class ConsoleSink:
    """The status as log lines: one per event, the full report at the end (embedded default)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("issueops.reporting.status")
        self.last_body: str | None = None

    def show(self, body: str, *, event: str) -> None:
        self.last_body = body
        self.logger.info("%s", event)


# ---------------------------------------------------------------------- the report


class StatusReport:
    """The live status of one request. Sink failures are logged, never raised: a GitHub
    outage must not fail a training run, and the next update tries again."""

    def __init__(
        self,
        sink: StatusSink,
        request_title: str,
        steps: Iterable[str] = (),
        *,
        run_id: str | None = None,
        links: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sink = sink
        self.title = request_title
        self.run_id = run_id
        self.links = dict(links or {})
        self.steps = [StepTiming(name, StepStatus.PENDING) for name in steps]
        self.result: RunResult | None = None
        self._clock = clock
        self._started: dict[str, float] = {}

    def render(self) -> str:
        return render_status(self.title, self.steps, result=self.result, links=self.links, run_id=self.run_id)

    def start(self) -> None:
        self._publish(f"{self.title}: started ({len(self.steps)} steps)")

    def step_started(self, name: str) -> None:
        self._step(name).status = StepStatus.RUNNING
        self._started[name] = self._clock()
        self._publish(f"{name}: running")

    def step_progress(self, name: str, note: str) -> None:
        """A running step's latest progress line, shown in its checklist entry."""
        self._step(name).status = f"running: {note}"
        self._publish(f"{name}: {note}")

    def step_finished(self, name: str, status: str = StepStatus.DONE, seconds: float | None = None) -> None:
        """Mark a step done, failed or skipped; timed from step_started unless `seconds` given."""
        step = self._step(name)
        step.status = status
        if seconds is None and name in self._started:
            seconds = self._clock() - self._started.pop(name)
        step.seconds = seconds
        took = f" in {format_seconds(seconds)}" if seconds is not None else ""
        self._publish(f"{name}: {status}{took}")

    def finish(self, result: RunResult) -> None:
        self.result = result
        # Steps the report did not see (a step run elsewhere) take the result's timings.
        for timing in result.steps:
            step = self._step(timing.name)
            if step.status == StepStatus.PENDING:
                step.status, step.seconds = timing.status, timing.seconds
        self._publish(
            f"{self.title}: {result.decision} — {result.evaluation_metric} "
            f"{format_value(result.metric_value)} (threshold {format_value(result.threshold)})"
        )

    def _step(self, name: str) -> StepTiming:
        for step in self.steps:
            if step.name == name:
                return step
        step = StepTiming(name, StepStatus.PENDING)
        self.steps.append(step)
        return step

    def _publish(self, event: str) -> None:
        try:
            self.sink.show(self.render(), event=event)
        except IssueOpsError as error:
            log.warning("could not update the status (%s): %s", event, error)
