"""What a notification says, and how each channel's wire format renders it.

Renderers are pure functions of a `Notification` so that every shape (Slack Block Kit, a Teams
Adaptive Card, a Discord embed, an email) can be checked without sending anything.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from issueops.results import RunResult, format_value, production_score


class NotificationType(StrEnum):
    TRAINING_SUCCESS = "training_success"
    RETRAIN_REQUIRED = "retrain_required"
    TRAINING_FAILED = "training_failed"
    ROLLED_BACK = "rolled_back"


_LABELS = {
    NotificationType.TRAINING_SUCCESS: "Training succeeded",
    NotificationType.RETRAIN_REQUIRED: "Retraining required",
    NotificationType.TRAINING_FAILED: "Training failed",
    NotificationType.ROLLED_BACK: "Production model rolled back",
}
_EMOJI = {
    NotificationType.TRAINING_SUCCESS: "\u2705",  # white heavy check mark
    NotificationType.RETRAIN_REQUIRED: "\U0001f501",  # repeat
    NotificationType.TRAINING_FAILED: "\u274c",  # cross mark
    NotificationType.ROLLED_BACK: "\u23ea",  # rewind
}
# Discord embed colours and the accent used in the HTML email.
_COLORS = {
    NotificationType.TRAINING_SUCCESS: 0x2EB67D,
    NotificationType.RETRAIN_REQUIRED: 0xECB22E,
    NotificationType.TRAINING_FAILED: 0xE01E5A,
    NotificationType.ROLLED_BACK: 0x8E44AD,
}
_TEAMS_COLORS = {
    NotificationType.TRAINING_SUCCESS: "Good",
    NotificationType.RETRAIN_REQUIRED: "Warning",
    NotificationType.TRAINING_FAILED: "Attention",
    NotificationType.ROLLED_BACK: "Warning",
}
_BY_DECISION = {
    "pass": NotificationType.TRAINING_SUCCESS,
    "retrain": NotificationType.RETRAIN_REQUIRED,
    "fail": NotificationType.TRAINING_FAILED,
    "error": NotificationType.TRAINING_FAILED,
}


@dataclass
class Notification:
    """One message about one run, independent of the channel that carries it."""

    type: NotificationType
    title: str
    message: str
    run_id: str | None = None
    issue: int | None = None
    repository: str | None = None
    evaluation_metric: str | None = None
    metric_value: float | None = None
    threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None
    attempt: int | None = None
    champion: dict[str, Any] | None = None  # production's version on the same data (RunResult.champion)
    links: dict[str, str] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        self.type = NotificationType(self.type)

    @classmethod
    def from_result(
        cls,
        result: RunResult,
        type: NotificationType | str | None = None,
        *,
        server_url: str = "https://github.com",
    ) -> Notification:
        """Build the notification for a run; `type` defaults from the judge's decision."""
        kind = NotificationType(type) if type is not None else _BY_DECISION.get(result.decision)
        if kind is None:
            kind = NotificationType.TRAINING_FAILED
        subject = result.model_name or result.spec.get("algorithm") or "model"
        dataset = result.spec.get("dataset_id")
        title = f"{_LABELS[kind]}: {subject}" + (f" on {dataset}" if dataset else "")
        if result.issue is not None:
            title += f" (issue #{result.issue})"
        links: dict[str, str] = {}
        if result.repository and result.issue is not None:
            links["Issue"] = f"{server_url.rstrip('/')}/{result.repository}/issues/{result.issue}"
        if _is_http(result.endpoint):
            links["Endpoint"] = result.endpoint
        if _is_http(result.history_path):
            links["History"] = result.history_path
        for name, uri in sorted(result.artifacts.items()):
            if _is_http(uri):
                links.setdefault(name, uri)
        # A step that failed after the decision (the history commit, say) is told on every
        # channel, so a GitHub outage is not silent where GitHub cannot speak.
        notes = [result.approval_note(), *(f"Warning: {w}" for w in result.warnings)]
        message = "\n\n".join([result.message, *(n for n in notes if n)]).strip()
        return cls(
            type=kind,
            title=title,
            message=message,
            run_id=result.run_id,
            issue=result.issue,
            repository=result.repository,
            evaluation_metric=result.evaluation_metric,
            metric_value=result.metric_value,
            threshold=result.threshold,
            metrics=dict(result.metrics),
            model_name=result.model_name,
            model_version=result.model_version,
            alias=result.alias,
            attempt=result.attempt,
            champion=result.champion,
            links=links,
            timestamp=result.finished_at or datetime.now(UTC).isoformat(timespec="seconds"),
        )

    @property
    def label(self) -> str:
        return _LABELS[self.type]

    @property
    def emoji(self) -> str:
        return _EMOJI[self.type]

    def facts(self) -> list[tuple[str, str]]:
        """The key/value lines every channel shows: the judged metric first, then run details."""
        facts: list[tuple[str, str]] = []
        if self.evaluation_metric and self.metric_value is not None:
            value = format_value(self.metric_value)
            if self.threshold is not None:
                value += f" (threshold {format_value(self.threshold)})"
            facts.append((self.evaluation_metric, value))
        elif self.threshold is not None:
            facts.append(("threshold", format_value(self.threshold)))
        if production := production_score(self.champion):  # beside the attempt's, on the same data
            header, value = production
            if self.champion.get("value") is None:
                facts.append((header, f"not scored: {self.champion.get('reason')}"))
            else:
                facts.append((header, f"{value} on {self.champion.get('scored_on')}"))
        for name, value in self.metrics.items():
            if name == self.evaluation_metric or not _is_scalar(value):
                continue
            facts.append((str(name), format_value(value)))
        if self.model_name:
            model = self.model_name + (f" v{self.model_version}" if self.model_version else "")
            if self.alias:
                model += f" ({self.alias})"
            facts.append(("model", model))
        if self.attempt is not None:
            facts.append(("attempt", str(self.attempt)))
        if self.run_id:
            facts.append(("run", self.run_id))
        return facts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = str(self.type)
        return data


def clip(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "\u2026"


def _is_http(value: str | None) -> bool:
    return bool(value) and value.startswith(("http://", "https://"))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool)


def _context_line(n: Notification) -> str:
    parts = [n.repository + (f"#{n.issue}" if n.issue is not None else "")] if n.repository else []
    if not n.repository and n.issue is not None:
        parts.append(f"issue #{n.issue}")
    if n.run_id:
        parts.append(f"run {n.run_id}")
    parts.append(n.timestamp)
    return " \u00b7 ".join(parts)


# GitHub comments are limited to 65536 characters.
GITHUB_COMMENT_LIMIT = 65536


def render_markdown(n: Notification) -> str:
    """GitHub-flavoured markdown for an issue comment; a hidden marker names the run and type."""
    lines = [f"<!-- issueops:notification type={n.type} run={n.run_id or ''} -->"]
    lines.append(f"### {n.emoji} {n.title}")
    lines.append("")
    lines.append(clip(n.message, 60000))
    facts = n.facts()
    if facts:
        lines += ["", "| | |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in facts]
    if n.links:
        lines += ["", " \u00b7 ".join(f"[{label}]({url})" for label, url in n.links.items())]
    return clip("\n".join(lines), GITHUB_COMMENT_LIMIT)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_text(n: Notification) -> str:
    """Plain text: the email's text part and the console line's body."""
    lines = [f"{n.title}", "", n.message, ""]
    width = max((len(k) for k, _ in n.facts()), default=0)
    lines += [f"{k.ljust(width)}  {v}" for k, v in n.facts()]
    if n.links:
        lines.append("")
        lines += [f"{label}: {url}" for label, url in n.links.items()]
    lines += ["", _context_line(n)]
    return "\n".join(lines).strip() + "\n"


def render_html(n: Notification) -> str:
    """A self-contained HTML email body (inline styles only: mail clients drop <style>)."""
    e = html.escape
    color = f"#{_COLORS[n.type]:06x}"
    rows = "".join(
        f'<tr><td style="padding:2px 12px 2px 0;color:#555">{e(k)}</td>'
        f'<td style="padding:2px 0;font-family:monospace">{e(v)}</td></tr>'
        for k, v in n.facts()
    )
    links = " &middot; ".join(
        f'<a href="{e(url, quote=True)}">{e(label)}</a>' for label, url in n.links.items()
    )
    message = e(n.message).replace("\n", "<br>\n")
    return (
        '<!DOCTYPE html>\n<html><body style="font-family:sans-serif">\n'
        f'<h2 style="border-left:6px solid {color};padding-left:8px">{e(n.title)}</h2>\n'
        f"<p>{message}</p>\n"
        + (f"<table>{rows}</table>\n" if rows else "")
        + (f"<p>{links}</p>\n" if links else "")
        + f'<p style="color:#888;font-size:small">{e(_context_line(n))}</p>\n'
        "</body></html>\n"
    )


def _slack_escape(text: str) -> str:
    # Slack mrkdwn treats &, < and > as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(n: Notification) -> dict[str, Any]:
    """Incoming-webhook JSON: `text` is the notification fallback, `blocks` the Block Kit layout."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": clip(f"{n.emoji} {n.title}", 150),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip(_slack_escape(n.message) or " ", 3000)},
        },
    ]
    facts = n.facts()
    # A section holds at most 10 fields of at most 2000 characters each.
    for start in range(0, min(len(facts), 40), 10):
        fields = [
            {"type": "mrkdwn", "text": clip(f"*{_slack_escape(k)}*\n{_slack_escape(v)}", 2000)}
            for k, v in facts[start : start + 10]
        ]
        blocks.append({"type": "section", "fields": fields})
    context = [{"type": "mrkdwn", "text": clip(_slack_escape(_context_line(n)), 3000)}]
    context += [
        {"type": "mrkdwn", "text": f"<{url}|{_slack_escape(label)}>"}
        for label, url in list(n.links.items())[:9]
    ]
    blocks.append({"type": "context", "elements": context})
    return {
        "text": clip(f"{n.emoji} {n.title}: {_slack_escape(n.message)}", 3000),
        "blocks": blocks,
    }


def teams_payload(n: Notification) -> dict[str, Any]:
    """A Teams workflow / incoming-webhook message carrying one Adaptive Card (schema 1.4)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": f"{n.emoji} {n.title}",
            "size": "Large",
            "weight": "Bolder",
            "color": _TEAMS_COLORS[n.type],
            "wrap": True,
        },
        {"type": "TextBlock", "text": clip(n.message, 8000), "wrap": True},
    ]
    facts = n.facts()
    if facts:
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts]})
    body.append(
        {
            "type": "TextBlock",
            "text": _context_line(n),
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        }
    )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "Full"},
    }
    if n.links:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": label, "url": url} for label, url in n.links.items()
        ]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


# https://discord.com/developers/docs/resources/message#embed-object-embed-limits
DISCORD_LIMITS = {
    "content": 2000,
    "title": 256,
    "description": 4096,
    "fields": 25,
    "field_name": 256,
    "field_value": 1024,
    "footer": 2048,
    "total": 6000,
}


def discord_payload(n: Notification) -> dict[str, Any]:
    """Webhook JSON with one embed, cut to Discord's documented limits (it rejects larger ones)."""
    lim = DISCORD_LIMITS
    title = clip(f"{n.emoji} {n.title}", lim["title"])
    footer = clip(_context_line(n), lim["footer"])
    fields = [
        {
            "name": clip(k, lim["field_name"]),
            "value": clip(v or "-", lim["field_value"]),
            "inline": True,
        }
        for k, v in n.facts()[: lim["fields"]]
    ]
    links = " \u00b7 ".join(f"[{label}]({url})" for label, url in n.links.items())
    description = n.message + (f"\n\n{links}" if links else "")
    # The sum of all embed text must stay under 6000: drop fields first, then cut the description.
    fixed = len(title) + len(footer)
    while fields and fixed + sum(len(f["name"]) + len(f["value"]) for f in fields) > lim["total"] - 200:
        fields.pop()
    budget = lim["total"] - fixed - sum(len(f["name"]) + len(f["value"]) for f in fields)
    description = clip(description, max(min(lim["description"], budget), 1))
    embed: dict[str, Any] = {
        "title": title,
        "description": description,
        "color": _COLORS[n.type],
        "fields": fields,
        "footer": {"text": footer},
        "timestamp": n.timestamp,
    }
    if "Issue" in n.links:
        embed["url"] = n.links["Issue"]
    return {
        "content": clip(f"{n.emoji} {n.label}", lim["content"]),
        "embeds": [embed],
        # Never let a message text ping @everyone or a role.
        "allowed_mentions": {"parse": []},
    }
