"""One served version's traffic judged over a window: drift against its reference profile and its
registered metric on labelled traffic. `issueops monitor drift|performance` and the MCP server's
`detect_drift` and `check_performance` are each a call of these.

The registry is only read (which version is in production, what it was registered with).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from issueops.errors import InvalidInput, NotFound
from issueops.store import ObjectStore

from .drift import MIN_ROWS, Correction, DriftReport, check_drift
from .inference_log import InferenceLog, NeverServed, logged_versions, read_inference_log
from .payloads import parse_since, payload_prefix
from .performance import MIN_LABELLED_ROWS, PerformanceReport, check_performance, read_feedback
from .profile import ReferenceProfile, load_reference_profile

DRIFT_WINDOW = "24h"
PERFORMANCE_WINDOW = "30d"


def parse_duration(text: str) -> timedelta:
    """30m, 24h, 7d, 2w as a positive timedelta; InvalidInput for anything else."""
    reference = datetime(2000, 1, 1, tzinfo=UTC)
    wrong = InvalidInput(f"{text!r} is not a duration such as 30m, 24h, 7d or 2w.")
    if not isinstance(text, str) or not text.strip()[-1:].isalpha():
        raise wrong
    try:
        value = reference - parse_since(text, reference)
    except InvalidInput:
        raise wrong from None
    if value <= timedelta(0):
        raise InvalidInput(f"{text!r} is not a positive duration.")
    return value


def served_version(registry, store: ObjectStore, model: str, version: int | None) -> int:
    """The version to look at: the named one or production's, which must have payload logs."""
    if version is None:
        production = registry.production(model)
        if production is None:
            if not logged_versions(store, model):
                raise NeverServed(
                    f"Model {model} has never been served: no inference logs under {payload_prefix(model)}/."
                )
            raise NotFound(f"Model {model} has no production version; name one with --version.")
        version = production.version
    if version not in logged_versions(store, model):
        raise NeverServed(
            f"Version {version} of {model} has never been served: no inference logs under "
            f"{payload_prefix(model, version)}/."
        )
    return version


def traffic_window(
    registry, store: ObjectStore, model: str, version: int | None, since: str
) -> tuple[int, ReferenceProfile, InferenceLog]:
    """The version looked at, its reference profile, and its payload log since `since` (a duration
    back from now, or an ISO time)."""
    version = served_version(registry, store, model, version)
    profile = load_reference_profile(store, model, version)
    log = read_inference_log(
        store, model, version, since=parse_since(since), feature_columns=profile.feature_columns
    )
    return version, profile, log


def drift_report(
    registry,
    store: ObjectStore,
    model: str,
    *,
    version: int | None = None,
    since: str = DRIFT_WINDOW,
    min_rows: int = MIN_ROWS,
    correction: Correction | str = Correction.BENJAMINI_HOCHBERG,
    plots_dir: Path | None = None,
) -> DriftReport:
    """Drift of a served version's traffic since `since` against its reference profile."""
    _, profile, log = traffic_window(registry, store, model, version, since)
    return check_drift(profile, log, min_rows=min_rows, correction=correction, plots_dir=plots_dir)


def performance_report(
    registry,
    store: ObjectStore,
    model: str,
    *,
    version: int | None = None,
    since: str = PERFORMANCE_WINDOW,
    tolerance: float = 0.0,
    min_labelled: int = MIN_LABELLED_ROWS,
) -> PerformanceReport:
    """A served version's registered metric measured on its labelled traffic since `since` (or, for a
    classifier with too few labels, estimated), against the value it was registered with."""
    version, profile, log = traffic_window(registry, store, model, version, since)
    return check_performance(
        profile,
        log,
        read_feedback(store, model),
        registered_metrics=registry.version(model, version).metrics,
        tolerance=tolerance,
        min_labelled=min_labelled,
    )
