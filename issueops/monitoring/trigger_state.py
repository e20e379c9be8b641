"""What `issueops monitor check` decided, kept between checks: monitoring/<model>/triggers.json
(the production version and since when, the drift verdict of each complete window, and per trigger
whether it fires and where its proposal is)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from issueops.errors import NotFound
from issueops.store import ObjectStore

from .payloads import MONITORING_PREFIX

log = logging.getLogger("issueops.monitoring")

STATE_FILE = "triggers.json"
STATE_FORMAT = 1
KEPT_WINDOWS = 60  # drift verdicts kept per model (older ones are never looked at again)


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


def iso_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
