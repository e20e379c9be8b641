"""What a GitHub event asks for, read from the payload alone (no network): pure and tested as such.

`issues` opened / labeled / edited with the training label → a new request from the issue body;
`issue_comment` created → operator input: a YAML block with `adjusted_hyperparameters`, and/or
one of the commands /retrain /approve /rollback [version] /cancel /status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from issueops.bridge.messages import is_own_comment
from issueops.errors import SpecError
from issueops.spec import extract_document

TRAIN_LABEL = "mlops:train"
_COMMAND = re.compile(
    r"^[ \t]*/(retrain|approve|rollback|cancel|status)\b[ \t]*([^\n]*)$", re.MULTILINE | re.IGNORECASE
)
_VERSION = re.compile(r"^v?(\d{1,9})$")
INPUT_KEY = "adjusted_hyperparameters"


@dataclass(frozen=True)
class Intent:
    """One thing the bridge should do for an event."""

    kind: str  # "request" | "input" | "ignore"
    repository: str = ""
    issue: int = 0
    sender: str = ""
    reason: str = ""
    body: str = ""  # the issue body, for a request
    action: str = ""  # the input's action
    adjusted: dict[str, Any] | None = None
    version: str | None = None
    comment_id: int | None = None
    problems: list[str] = field(default_factory=list)  # input that cannot be read


def ignore(reason: str, **known: Any) -> Intent:
    return Intent("ignore", reason=reason, **known)


def label_names(issue: dict[str, Any]) -> list[str]:
    return [
        (label.get("name") if isinstance(label, dict) else str(label)) for label in issue.get("labels") or []
    ]


def interpret(event: str, payload: dict[str, Any], *, label: str = TRAIN_LABEL) -> Intent:
    issue = payload.get("issue") or {}
    repository = (payload.get("repository") or {}).get("full_name", "")
    sender = payload.get("sender") or {}
    known = {
        "repository": repository,
        "issue": int(issue.get("number") or 0),
        "sender": sender.get("login", ""),
    }
    if not issue.get("number"):
        return ignore("no issue in the payload", **known)
    if issue.get("pull_request"):
        return ignore("pull requests are not training requests", **known)
    action = payload.get("action")
    if event == "issues":
        return _issue_intent(action, payload, issue, label, known)
    if event == "issue_comment":
        return _comment_intent(action, payload, sender, known)
    return ignore(f"{event} events are not handled", **known)


def _issue_intent(action, payload, issue, label, known) -> Intent:
    if action not in ("opened", "labeled", "edited", "reopened"):
        return ignore(f"issues.{action} does not start training", **known)
    if label not in label_names(issue):
        return ignore(f"the issue has no {label} label", **known)
    if action == "labeled" and (payload.get("label") or {}).get("name") != label:
        return ignore(f"another label than {label} was added", **known)
    if action == "edited" and "body" not in (payload.get("changes") or {}):
        return ignore("only the title changed", **known)
    if issue.get("state") == "closed":
        return ignore("the issue is closed", **known)
    return Intent("request", body=issue.get("body") or "", reason=f"issues.{action}", **known)


def _comment_intent(action, payload, sender, known) -> Intent:
    if action != "created":
        return ignore(f"issue_comment.{action} carries no new input", **known)
    comment = payload.get("comment") or {}
    body = comment.get("body") or ""
    if is_own_comment(body) or sender.get("type") == "Bot":
        return ignore("a comment of ours (or another bot)", **known)
    return read_input(body, comment_id=comment.get("id"), **known)


def read_input(body: str, *, comment_id: int | None = None, **known: Any) -> Intent:
    """A comment's operator input; `problems` set when it tries but cannot be read."""
    command = _COMMAND.search(body)
    action, argument = (command.group(1).lower(), command.group(2).strip()) if command else ("", "")
    adjusted, problems = None, []
    if re.search(rf"^\s*\"?{INPUT_KEY}\"?\s*:", body, re.MULTILINE):
        try:
            doc = extract_document(_without_commands(body), key=INPUT_KEY)
        except SpecError as error:
            problems = list(error.problems)
        else:
            value = doc.get(INPUT_KEY) if isinstance(doc, dict) else None
            if not isinstance(value, dict) or not value:
                problems = [f"{INPUT_KEY} must be a mapping of hyperparameter: value."]
            else:
                adjusted = value
        if action and action != "retrain":
            problems.append(f"{INPUT_KEY} goes with /retrain (or alone), not with /{action}.")
        action = "retrain"
    if not action:
        return ignore("no command and no adjusted_hyperparameters", comment_id=comment_id, **known)
    version = None
    if action in ("approve", "rollback") and argument:
        match = _VERSION.match(argument.split()[0])
        if match is None:
            problems.append(f"/{action} takes a version number, e.g. /{action} 3; got {argument[:40]!r}.")
        else:
            version = match.group(1)
    return Intent(
        "input",
        action=action,
        adjusted=adjusted,
        version=version,
        comment_id=comment_id,
        problems=problems,
        reason=f"/{action}",
        **known,
    )


def _without_commands(body: str) -> str:
    return _COMMAND.sub("", body)
