"""The record of one training attempt, shared by the CLI, history, notifications and reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepTiming:
    name: str
    status: str  # pending | running | done | failed | skipped
    seconds: float | None = None


@dataclass
class RunResult:
    run_id: str
    spec: dict[str, Any]
    decision: str  # pass | retrain | fail | error
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
