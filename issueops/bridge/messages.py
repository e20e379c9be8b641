"""What the bridge and the operator say on an issue. Pure functions of the request; tested as text.

Every comment carries a hidden marker so the bridge recognises its own comments (GitHub sends
them back as `issue_comment` events) and never acts on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from issueops.lifecycle.state_machine import TrainingRequest, adjustable
from issueops.reporting.status import QUESTION_MARKER, cell, format_value
from issueops.results import RunResult, format_seconds, production_score
from issueops.spec.catalog import ALGORITHMS, METRICS

REPLY_MARKER = "<!-- issueops:reply -->"
NOTICE_MARKER = "<!-- issueops:notice -->"
OWN_MARKERS = ("<!-- issueops:",)


def is_own_comment(body: str | None) -> bool:
    return bool(body) and any(marker in body for marker in OWN_MARKERS)


def suggested_value(name: str, request: TrainingRequest) -> Any:
    """A plausible next value for an example comment: more capacity for integer budgets."""
    param = ALGORITHMS[request.spec.algorithm].param(name)
    current = request.effective_spec.hyperparameters.get(name, param.default if param else None)
    if param is None or param.type != "int" or not isinstance(current, int):
        return current if current is not None else (param.default if param else None)
    bigger = max(current * 2, current + 1)
    return min(bigger, int(param.maximum)) if param.maximum is not None else bigger


def question(request: TrainingRequest, result: RunResult, *, timeout_s: float) -> str:
    """Ask for adjusted hyperparameters: metrics, threshold, what can change, an example comment."""
    spec = request.effective_spec
    metric = METRICS[result.evaluation_metric] if result.evaluation_metric in METRICS else None
    relation = ">=" if metric is None or metric.higher_is_better else "<="
    production = production_score(result.champion)
    theirs = (result.champion or {}).get("metrics") or {}

    def row(name: str, value: Any, bound: str, bold: bool = False) -> str:
        mark = "**" if bold else ""
        cells = [f"{mark}{cell(name)}{mark}", f"{mark}{format_value(value)}{mark}"]
        if production is not None:
            cells.append(production[1] if bold else format_value(theirs.get(name)))
        return f"| {' | '.join(cells)} | {bound} |" if bound else f"| {' | '.join(cells)} | |"

    rows = [
        row(
            result.evaluation_metric,
            result.metric_value,
            f"{relation} {format_value(result.threshold)}",
            True,
        )
    ]
    for name, value in sorted(result.metrics.items()):
        if name != result.evaluation_metric and isinstance(value, (int, float)):
            rows.append(row(name, value, ""))
    header = ["| metric | value | threshold |", "|---|---|---|"]
    if production is not None:
        header = [f"| metric | value | {production[0]} | threshold |", "|---|---|---|---|"]
    lost = bool((result.champion or {}).get("lost"))
    missed = f"did not beat {production[0]}" if lost else "missed the threshold"
    params = [
        f"| `{name}` | {cell(allowed)} | {format_value(current)} |"
        for name, allowed, current in adjustable(spec)
    ]
    given = list(spec.hyperparameters) or [p.name for p in ALGORITHMS[spec.algorithm].params[:2]]
    example = "\n".join(f"  {name}: {_yaml_scalar(suggested_value(name, request))}" for name in given)
    left = request.attempts_left
    mention = f"@{request.requested_by} " if request.requested_by else ""
    return "\n".join(
        [
            QUESTION_MARKER,
            f"### {mention}Attempt {request.attempt} {missed} — how should the next one train?",
            "",
            f"Run `{result.run_id}` · {result.message}",
            "",
            *header,
            *rows,
            "",
            f"**Adjustable hyperparameters** of `{spec.algorithm}` "
            f"({left} attempt{'s' if left != 1 else ''} left):",
            "",
            "| hyperparameter | allowed | current |",
            "|---|---|---|",
            *params,
            "",
            "Reply with a comment like this to train the next attempt:",
            "",
            "```yaml",
            "adjusted_hyperparameters:",
            example,
            "```",
            "",
            "Or `/retrain` to train again as it is, `/cancel` to stop. Only people with write "
            "access to the repository (or on the allowlist) can steer a run. Without an answer "
            f"within {format_seconds(timeout_s)} (by {request.wait_deadline}) the request fails and nothing "
            "changes in production.",
            "",
        ]
    )


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _problems(problems: Iterable[str]) -> str:
    return "\n".join(f"- {p}" for p in problems)


def spec_rejected(problems: Iterable[str]) -> str:
    return (
        f"{REPLY_MARKER}\n### The training spec cannot be used\n\n{_problems(problems)}\n\n"
        "Edit the issue to fix it; training starts when the spec is valid.\n"
    )


def input_rejected(request: TrainingRequest, problems: Iterable[str]) -> str:
    waiting = (
        f" The request keeps waiting for a valid answer until {request.wait_deadline}."
        if request.wait_deadline
        else ""
    )
    return (
        f"{REPLY_MARKER}\n### That input was not applied\n\n{_problems(problems)}\n\n"
        f"Nothing changed.{waiting}\n"
    )


def not_allowed(user: str, what: str, *, started: bool = True) -> str:
    """The refusal for someone who may not steer; `started`: they tried to start training."""
    outcome = "Nothing was started." if started else "Nothing was changed."
    return (
        f"{REPLY_MARKER}\n@{user} only people with write, maintain or admin access to this "
        f"repository (or on the configured allowlist) can {what}. {outcome}\n"
    )


def _not_applied(command: str, why: str) -> str:
    return f"{REPLY_MARKER}\n`{command}` was not applied: {why}\n"


def no_request(action: str, label: str) -> str:
    return _not_applied(
        f"/{action}",
        f"this issue has no training request. Add the `{label}` label with a training spec in the "
        "issue body to start one.",
    )


def not_a_proposal(command: str, label: str) -> str:
    return _not_applied(
        command,
        f"it approves retraining proposals, the issues labelled `{label}` that `issueops monitor "
        "check` opens, and this issue is not one.",
    )


def proposal_closed(command: str) -> str:
    return _not_applied(command, "this proposal is closed, which declines it; reopen it to approve it.")


def proposal_already_approved(command: str, request: TrainingRequest) -> str:
    return _not_applied(
        command,
        f"this proposal already has request `{request.name}` ({request.phase}); `/retrain` trains it "
        "again once that one has ended.",
    )


def plain_reply(message: str) -> str:
    """A reply saying `message` as it is: a command's outcome, done or refused."""
    return f"{REPLY_MARKER}\n{message}\n"


def status_reply(request: TrainingRequest) -> str:
    lines = [
        f"{REPLY_MARKER}",
        f"### Request `{request.name}`: {request.phase}",
        "",
        "| attempt | run | decision | value |",
        "|---|---|---|---|",
    ]
    for a in request.attempts:
        lines.append(
            f"| {a.attempt} | `{a.run_id}` | {a.decision or 'running'} | {format_value(a.metric_value)} |"
        )
    if not request.attempts:
        lines.append("| — | — | queued | — |")
    lines += ["", request.message]
    if request.model_version:
        lines.append(f"\nModel `{request.model_name}` version {request.model_version}.")
    return "\n".join(lines) + "\n"


def notice(title: str, message: str, request: TrainingRequest) -> str:
    run = f" · last run `{request.run_id}`" if request.run_id else ""
    return f"{NOTICE_MARKER}\n### {title}\n\n{message}\n\nRequest `{request.name}`{run}.\n"
