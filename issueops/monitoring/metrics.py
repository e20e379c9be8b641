"""Every Prometheus series issueops exports, defined once so that every process names them alike.

The README's "Metrics and alerts" table lists them; manifests/monitoring's alerts and dashboard
read them. Labels are bounded sets (phases, decisions, steps, channels, served models and
versions, HTTP status codes): issue numbers and run ids go to the logs, never into a label.

The series live in prometheus_client's default registry, where kserve keeps its own histograms,
so one `/metrics` shows both. `issueops serve --workers N` forks processes that share one port:
a scrape reaches any one of them, so they keep their values in prometheus_client's multiprocess
files (PROMETHEUS_MULTIPROC_DIR, which `issueops serve` sets before anything imports
prometheus_client) and `exposition()` adds up every process's files.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import exposition as _exposition
from prometheus_client import multiprocess as _multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, not an issueops setting

# No `<name>_created` series beside every counter and histogram: nothing reads them, and they
# double what each scrape carries.
disable_created_metrics()

# Training requests and attempts (bridge, operator).
REQUESTS = Counter("issueops_requests_total", "Training requests that reached a phase.", ["phase"])
ATTEMPTS = Counter("issueops_attempts_total", "Training attempts by the judge's decision.", ["decision"])
STEP_DURATION = Histogram(
    "issueops_step_duration_seconds",
    "Duration of each pipeline step.",
    ["step"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, float("inf")),
)
QUEUE_DEPTH = Gauge(
    "issueops_queue_depth", "Training requests waiting for a run slot.", multiprocess_mode="livemax"
)
NOTIFICATION_FAILURES = Counter(
    "issueops_notification_failures_total", "Notifications that could not be delivered.", ["channel"]
)

# Serving and payload logs (issueops serve, issueops monitor serve).
INFERENCE_REQUESTS = Counter(
    "issueops_inference_requests_total",
    "Inference requests by served model, version and HTTP status (gRPC statuses as their HTTP equivalents).",
    ["model", "version", "code"],
)
PAYLOAD_LOG_DROPPED = Counter(
    "issueops_payload_log_dropped_total", "Inferences the payload logger dropped because its queue was full."
)
PAYLOAD_LOG_QUEUE_DEPTH = Gauge(
    "issueops_payload_log_queue_depth",
    "Inferences waiting for the payload logger to write them.",
    multiprocess_mode="livesum",
)

# Models in production and their drift (operator, from the registry and triggers.json).
DRIFT_SHARE = Gauge(
    "issueops_drift_share", "Drift share of the latest complete window.", ["model"], multiprocess_mode="max"
)
DRIFT_LAST_CHECK = Gauge(
    "issueops_drift_last_check_timestamp_seconds",
    "When issueops monitor check last ran for the model.",
    ["model"],
    multiprocess_mode="max",
)
PRODUCTION_VERSION = Gauge(
    "issueops_production_version_info",
    "The version in production (value 1).",
    ["model", "version"],
    multiprocess_mode="max",
)
MODEL_LAST_TRAINED = Gauge(
    "issueops_model_last_trained_timestamp_seconds",
    "When the production version was registered.",
    ["model"],
    multiprocess_mode="max",
)

# gRPC status codes as HTTP statuses (grpc-gateway's HTTPStatusFromCode), so `code` reads alike
# for both protocols and the alerts' 5.. and 2.. match both.
GRPC_TO_HTTP = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}

_inference_children: dict[tuple[str, str, int], object] = {}


def count_inference(model: str, version: int | str | None, code: int) -> None:
    """One inference request answered with HTTP status `code`. `model` must be a served model's
    name ("" for a name the endpoint does not serve: a client's typo is no new series)."""
    key = (model, "" if version is None else str(version), code)
    child = _inference_children.get(key)
    if child is None:  # labels() takes a lock and builds a tuple: about a microsecond per request
        child = _inference_children.setdefault(key, INFERENCE_REQUESTS.labels(key[0], key[1], str(code)))
    child.inc()


def count_request_phase(phase: str) -> None:
    """A training request reached `phase` (a Phase value)."""
    REQUESTS.labels(str(phase)).inc()


def count_attempt(decision: str) -> None:
    """An attempt was judged: pass, retrain, fail or error."""
    ATTEMPTS.labels(str(decision)).inc()


def observe_step(step: str, seconds: float) -> None:
    """A pipeline step took `seconds`."""
    STEP_DURATION.labels(step).observe(max(0.0, float(seconds)))


def set_queue_depth(waiting: int) -> None:
    """Training requests waiting for a run slot now."""
    QUEUE_DEPTH.set(waiting)


def count_notification_failure(channel: str) -> None:
    """A notification to `channel` (github, slack, teams, discord, email) could not be delivered."""
    NOTIFICATION_FAILURES.labels(channel).inc()


def set_drift(model: str, share: float | None, checked_at: float) -> None:
    """The latest drift check of `model` (share None: no complete window yet)."""
    if share is not None:
        DRIFT_SHARE.labels(model).set(share)
    DRIFT_LAST_CHECK.labels(model).set(checked_at)


_production: dict[str, str] = {}


def set_production(model: str, version: int | None, registered_at: float | None = None) -> None:
    """`model`'s production version (None: it has none) and when that version was registered; the
    info series of a version that left production is removed, so it stops counting as one."""
    previous = _production.pop(model, None)
    if previous is not None and previous != str(version):
        PRODUCTION_VERSION.remove(model, previous)
    if version is not None:
        _production[model] = str(version)
        PRODUCTION_VERSION.labels(model, str(version)).set(1)
        if registered_at is not None:
            MODEL_LAST_TRAINED.labels(model).set(registered_at)


def observe_models(registry, store) -> None:
    """Every model's production version (and when it was registered) from the registry, and its
    latest drift check from its triggers.json: what `issueops monitor check` and the pipelines
    record in processes that end, read by the long-lived operator that exports them."""
    from datetime import datetime

    from issueops.monitoring.trigger_state import load_state

    def timestamp(text: str | None) -> float | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None

    production = registry.production_versions()
    for model in set(_production) - set(production):
        set_production(model, None)
    for model, version in production.items():
        set_production(model, version, timestamp(registry.version(model, version).created_at))
        state = load_state(store, model)
        if state.checked_at:
            set_drift(model, state.drift_share, timestamp(state.checked_at))


def multiprocess() -> bool:
    """Whether values are kept in multiprocess files (issueops serve --workers N)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The body and content type of GET /metrics: every series of this process, or of every
    process sharing the multiprocess directory. OpenMetrics when the scraper asks for it."""
    registry = REGISTRY
    if multiprocess():
        # A registry of its own per scrape, as prometheus_client's multiprocess mode asks.
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
    encoder, content_type = _exposition.choose_encoder(accept or "")
    return encoder(registry), content_type


def process_ended(pid: int) -> None:
    """A process of this multiprocess directory ended: its live gauges stop counting."""
    if multiprocess():
        _multiprocess.mark_process_dead(pid)
