"""The record of one training attempt, shared by the CLI, history, notifications and reports."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Decision(StrEnum):
    """What became of an attempt: the judge's verdict, or why there is none. The values are stored
    (judgement.json, the request's attempts, MLflow tags) and compared as plain strings."""

    PASS = "pass"
    RETRAIN = "retrain"
    FAIL = "fail"
    ERROR = "error"  # a step failed before the judge ran
    INTERRUPTED = "interrupted"  # the run's process died (runs.run_state)
    UNKNOWN = "unknown"  # the run's record holds neither a judgement nor an error


class StepStatus(StrEnum):
    """Where a pipeline step stands in the run's record (runs/<run_id>/steps/<step>.json)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # it was running when the run's process died


def format_value(value: object) -> str:
    """A number as every table, comment, message and notification shows it: 0.9123, 1, 12,
    1234.57, 1.5e+07; None as a dash. The one formatter, so `1` in a table is `1` in the text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value).replace("nan", "NaN")
        if abs(value) >= 1e6:
            return f"{value:.4g}"
        text = f"{value:.4f}" if abs(value) < 1000 else f"{value:.2f}"
        text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def format_seconds(seconds: float) -> str:
    """A duration as a person says it: 0.4 s, 40 s, 2 min 5 s, 40 min, 2 h 1 min, 24 h."""
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass
class StepTiming:
    name: str
    status: str  # a StepStatus
    seconds: float | None = None


@dataclass
class RunResult:
    run_id: str
    spec: dict[str, Any]
    decision: str  # a Decision
    message: str
    evaluation_metric: str
    threshold: float | None
    metric_value: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    issue: int | None = None
    repository: str | None = None
    attempt: int = 1
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None
    endpoint: str | None = None
    served_version: str | None = None
    history_path: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    steps: list[StepTiming] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # production's version scored on this attempt's data when the judge ran (judge.Judgement.champion)
    champion: dict[str, Any] | None = None

    @property
    def awaiting_approval(self) -> bool:
        """A passing version, registered and packaged, that waits for manual approval."""
        deployed = any(s.name == "deploy" and s.status == StepStatus.DONE for s in self.steps)
        return (
            self.decision == Decision.PASS
            and bool(self.model_version)
            and self.alias != "production"
            and deployed
        )

    def approval_note(self) -> str | None:
        """What to do about a version waiting for manual approval, with the commands; else None."""
        if not self.awaiting_approval:
            return None
        version, model = self.model_version, self.model_name
        where = (
            f"comment `/approve {version}` on issue #{self.issue}, or run "
            if self.issue is not None
            else "run "
        )
        production = (
            f"Production stays at version {self.served_version} until then."
            if self.served_version and self.served_version != version
            else "Nothing is in production until then."
        )
        return (
            f"Version {version} of `{model}` waits for manual approval: {where}"
            f"`issueops registry approve {model} {version}`. {production}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["steps"] = [StepTiming(**s) for s in data.get("steps", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def production_score(champion: dict[str, Any] | None) -> tuple[str, str] | None:
    """Production's score beside the attempt's, as every table and message shows it:
    ("production v3", "0.9474"), with "not scored" when it could not be; None without one."""
    if not champion:
        return None
    version = champion.get("version")
    value = champion.get("value")
    header = f"production v{version}" if version is not None else "production"
    return header, format_value(value) if value is not None else "not scored"


def production_note(champion: dict[str, Any] | None) -> str | None:
    """What production's score rests on (or why there is none), one sentence; None without one."""
    if not champion:
        return None
    header, _ = production_score(champion)
    registered = champion.get("registered_value")
    at_registration = (
        f"; it was registered with {format_value(registered)} on its own test split"
        if registered is not None
        else ""
    )
    if champion.get("value") is None:
        return f"{header[0].upper()}{header[1:]} was not scored: {champion.get('reason')}."
    return f"{header[0].upper()}{header[1:]} was scored on {champion.get('scored_on')}{at_registration}."


def production_after(
    model: str, *, changed: bool, from_version: int | None = None, to_version: int | None = None
) -> str:
    """What a failed request left in production, naming the version (`bc-rf` v1) or saying there
    is none: never a "previous production model" that may not exist."""
    if changed:
        back = f"v{to_version}" if to_version is not None else "no version (nothing is served)"
        return f"Production of `{model}` went back from v{from_version} to {back}."
    if to_version is not None:
        return f"`{model}` v{to_version} stays in production."
    return f"`{model}` has no production version; none was put there."


def after_rollback(outcome: dict[str, Any]) -> str:
    """`production_after` for a rollback's recorded outcome (RollbackResult.to_dict())."""
    return production_after(
        str(outcome.get("model")),
        changed=bool(outcome.get("changed")),
        from_version=outcome.get("from_version"),
        to_version=outcome.get("to_version"),
    )
