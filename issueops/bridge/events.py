"""What a GitHub event asks for, read from the payload alone (no network): pure and tested as such.

`issues` opened / labeled / edited with the training label → a new request from the issue body;
`issue_comment` created → operator input: a YAML block with `adjusted_hyperparameters`, and/or
one of the commands /retrain /approve /rollback [version] /cancel /status, or /approve-retrain on a
retraining proposal (an issue labelled mlops:retrain-proposal, which has no request yet).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from issueops.bridge.messages import is_own_comment
from issueops.errors import SpecError
from issueops.monitoring.proposal_ref import APPROVE_COMMAND
from issueops.spec.body import extract_document, has_key_line

TRAIN_LABEL = "mlops:train"
APPROVE_RETRAIN = APPROVE_COMMAND.lstrip("/")
# approve-retrain before approve: an alternation takes the first that matches, and `\b` holds
# between "approve" and "-", so the other order read /approve-retrain as /approve "-retrain".
COMMANDS = (APPROVE_RETRAIN, "retrain", "approve", "rollback", "cancel", "status")
_COMMAND = re.compile(
    rf"^[ \t]*/({'|'.join(COMMANDS)})\b[ \t]*([^\n]*)$", re.MULTILINE | re.IGNORECASE | re.ASCII
)
_VERSION = re.compile(r"v?([0-9]{1,9})")
INPUT_KEY = "adjusted_hyperparameters"


@dataclass(frozen=True)
class Intent:
    """One thing the bridge should do for an event."""

    kind: str  # "request" | "input" | "ignore"
    repository: str = ""
    issue: int = 0
    sender: str = ""
    reason: str = ""
    body: str = ""  # the text still to read: a request's issue body, or a comment's YAML input
    action: str = ""  # the input's action
    adjusted: dict[str, Any] | None = None
    version: str | None = None
    comment_id: int | None = None
    problems: list[str] = field(default_factory=list)  # input that cannot be read
    labels: tuple[str, ...] = ()  # the issue's labels (comments: whether it is a proposal)


def ignore(reason: str, **known: Any) -> Intent:
    return Intent("ignore", reason=reason, **known)


class _Malformed(ValueError):
    """A payload field without GitHub's type: the delivery is ignored, with the reason."""


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an object")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"{where} is not a string")
    return value


def _number(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise _Malformed(f"{where} is not a positive integer")
    return value


def label_names(issue: dict[str, Any]) -> list[str]:
    labels = issue.get("labels") or []
    if not isinstance(labels, list):
        raise _Malformed("issue.labels is not a list")
    return [
        _text(label.get("name"), "a label's name") if isinstance(label, dict) else _text(label, "a label")
        for label in labels
    ]


def interpret(event: str, payload: dict[str, Any], *, label: str = TRAIN_LABEL) -> Intent:
    """What a delivery asks for. Comments are only scanned here (linear, no YAML): their input is
    read by `read_adjusted` once their author is known to be allowed to steer."""
    try:
        return _interpret(event, payload, label)
    except _Malformed as problem:
        return ignore(f"malformed payload: {problem}")


def _interpret(event: str, payload: Any, label: str) -> Intent:
    payload = _object(payload, "the payload")
    issue = _object(payload.get("issue"), "issue")
    sender = _object(payload.get("sender"), "sender")
    number = _number(issue.get("number"), "issue.number")
    known = {
        "repository": _text(
            _object(payload.get("repository"), "repository").get("full_name"), "repository.full_name"
        ),
        "issue": number or 0,
        "sender": _text(sender.get("login"), "sender.login"),
    }
    if not number:
        return ignore("no issue in the payload", **known)
    if issue.get("pull_request"):
        return ignore("pull requests are not training requests", **known)
    action = _text(payload.get("action"), "action")
    if event == "issues":
        return _issue_intent(action, payload, issue, label, known)
    if event == "issue_comment":
        return _comment_intent(action, payload, issue, sender, known)
    return ignore(f"{event} events are not handled", **known)


def _issue_intent(action, payload, issue, label, known) -> Intent:
    if action not in ("opened", "labeled", "edited", "reopened"):
        return ignore(f"issues.{action[:40]} does not start training", **known)
    if label not in label_names(issue):
        return ignore(f"the issue has no {label} label", **known)
    added = _text(_object(payload.get("label"), "label").get("name"), "label.name")
    if action == "labeled" and added != label:
        return ignore(f"another label than {label} was added", **known)
    if action == "edited" and "body" not in _object(payload.get("changes"), "changes"):
        return ignore("only the title changed", **known)
    if _text(issue.get("state"), "issue.state") == "closed":
        return ignore("the issue is closed", **known)
    return Intent("request", body=_text(issue.get("body"), "issue.body"), reason=f"issues.{action}", **known)


def _comment_intent(action, payload, issue, sender, known) -> Intent:
    if action != "created":
        return ignore(f"issue_comment.{action[:40]} carries no new input", **known)
    comment = _object(payload.get("comment"), "comment")
    body = _text(comment.get("body"), "comment.body")
    if is_own_comment(body) or _text(sender.get("type"), "sender.type") == "Bot":
        return ignore("a comment of ours (or another bot)", **known)
    intent = scan_input(body, comment_id=_number(comment.get("id"), "comment.id"), **known)
    return replace(intent, labels=tuple(label_names(issue))) if intent.action == APPROVE_RETRAIN else intent


def scan_input(body: str, *, comment_id: int | None = None, **known: Any) -> Intent:
    """What a comment asks for, from a linear scan of its lines: a command, and whether it carries
    adjusted_hyperparameters (kept in `body`, not read yet)."""
    command = _find_command(body)
    action, argument = (command.group(1).lower(), command.group(2).strip()) if command else ("", "")
    problems: list[str] = []
    carries_input = has_key_line(body, INPUT_KEY)
    if carries_input:
        if action and action != "retrain":
            problems.append(f"{INPUT_KEY} goes with /retrain (or alone), not with /{action}.")
        action = "retrain"
    if not action:
        return ignore("no command and no adjusted_hyperparameters", comment_id=comment_id, **known)
    version = None
    if action in ("approve", "rollback") and argument:
        match = _VERSION.fullmatch(argument.split()[0])
        if match is None:
            problems.append(f"/{action} takes a version number, e.g. /{action} 3; got {argument[:40]!r}.")
        else:
            version = match.group(1)
    return Intent(
        "input",
        action=action,
        body=body if carries_input else "",
        version=version,
        comment_id=comment_id,
        problems=problems,
        reason=f"/{action}",
        **known,
    )


def read_adjusted(intent: Intent, *, extract: Callable[..., Any] = extract_document) -> Intent:
    """The input with its adjusted_hyperparameters read: the YAML parse, for an allowed author only
    (`extract`: the bridge reads in a process of its own, issueops.bridge.reader)."""
    if intent.kind != "input" or not intent.body:
        return intent
    adjusted, problems = None, []
    try:
        doc = extract(_without_commands(intent.body), key=INPUT_KEY)
    except SpecError as error:
        problems = list(error.problems)
    else:
        value = doc.get(INPUT_KEY) if isinstance(doc, dict) else None
        if not isinstance(value, dict) or not value:
            problems = [f"{INPUT_KEY} must be a mapping of hyperparameter: value."]
        else:
            adjusted = value
    return replace(intent, adjusted=adjusted, problems=problems + intent.problems)


def read_input(body: str, *, comment_id: int | None = None, **known: Any) -> Intent:
    """A comment's operator input, read in full; `problems` set when it tries but cannot be read."""
    return read_adjusted(scan_input(body, comment_id=comment_id, **known))


def _find_command(body: str) -> re.Match[str] | None:
    # A look for the words first (a search for a fixed string): the line scan costs ~1.5 ms on a
    # 64 KiB comment, with the GIL held, and most comments name no command.
    lowered = body.lower()
    if not any(f"/{word}" in lowered for word in COMMANDS):
        return None
    return _COMMAND.search(body)


def _without_commands(body: str) -> str:
    return _COMMAND.sub("", body) if _find_command(body) else body
