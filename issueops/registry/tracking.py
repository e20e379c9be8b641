"""Tracking: one attempt logged as an MLflow run (params, metrics, tags, artifacts); the database set-up."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from issueops.errors import (
    InvalidInput,
)
from issueops.registry.lock import FileLock, sqlite_path
from issueops.registry.names import (
    _METRIC_KEY_BAD,
    BATCH,
    EXPERIMENT,
    LOGGED_TAG,
    MAX_METRICS,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    NOT_LOGGED_ARTIFACTS,
    RUN_ID_TAG,
    _check_run_id,
    _cut,
    _is_code,
    _ms,
    _prepared,
    _preparing,
    _slug,
    _translated,
    model_name_for,
    spec_hash,
)
from issueops.results import RunResult


def _numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) dict, keyed `a.b`; booleans and non-numbers are left out."""
    found: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(_numeric(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[_METRIC_KEY_BAD.sub("_", name)[:250]] = float(value)
    return found


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_VALUE]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[_METRIC_KEY_BAD.sub("_", name)[:250]] = _param_value(value)
    return flat


def spec_params(spec: dict[str, Any]) -> dict[str, str]:
    """MLflow params of a spec: hyperparameters under their own names (nested ones as `a.b`), the
    other scalar fields as they are; a hyperparameter named like a spec field gets the prefix
    `hyperparameters.` so that neither is lost."""
    hyper = spec.get("hyperparameters") or {}
    params = _flatten({k: v for k, v in spec.items() if k != "hyperparameters" and not isinstance(v, dict)})
    for key, value in _flatten(hyper).items():
        params[f"hyperparameters.{key}" if key in params else key] = value
    return params


def default_artifact_location(tracking_uri: str) -> str | None:
    """Beside the database for a local SQLite store (MLflow would otherwise use ./mlruns);
    None for a server, which decides where its artifacts go."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite" and parsed.path and parsed.path != "/:memory:":
        database = Path(unquote(tracking_uri[len("sqlite:///") :]))
        if not database.is_absolute():
            database = database.resolve()
        return (database.parent / "mlartifacts").as_uri()
    return None


def prepare_database(tracking_uri: str, registry_uri: str | None = None) -> None:
    """Create a SQLite registry's schema once, under a lock beside the database.

    MLflow creates (and migrates) the schema on first use, without a lock: two processes starting
    on a fresh database at once both try, and one fails half way. A server owns its schema: nothing
    to do for one.
    """
    registry_uri = registry_uri or tracking_uri
    if (tracking_uri, registry_uri) in _prepared:
        return
    from mlflow import MlflowClient

    with _preparing:
        if (tracking_uri, registry_uri) in _prepared:
            return
        databases = sorted({p for p in (sqlite_path(tracking_uri), sqlite_path(registry_uri)) if p})
        with contextlib.ExitStack() as held:
            for database in databases:
                database.parent.mkdir(parents=True, exist_ok=True)
                lock = FileLock(database.parent / f"{database.name}.locks", wait_s=600)
                held.enter_context(lock.hold("schema", name="schema"))
            if databases:
                # MLflow announces its schema creation and migrations at INFO on stderr, which would
                # stand before every command's own answer on a fresh home.
                quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
                levels = [logger.level for logger in quiet]
                for logger in quiet:
                    logger.setLevel(logging.WARNING)
                try:
                    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
                    client.search_experiments(max_results=1)
                    client.search_registered_models(max_results=1)
                finally:
                    for logger, level in zip(quiet, levels, strict=True):
                        logger.setLevel(level)
        _prepared.add((tracking_uri, registry_uri))


class Tracking:
    """Registry's tracking methods (a mixin: Registry in issueops.registry.lifecycle holds the client and the lock)."""

    # tracking runs

    @_translated("log the run to MLflow")
    def log_run(self, result: RunResult, artifacts_dir: Path | None = None) -> str:
        """Log one attempt as an MLflow run and return its MLflow run id; a second call for the same
        run id returns the same run (an interrupted earlier call is completed)."""
        _check_run_id(result.run_id)
        if artifacts_dir is not None and not Path(artifacts_dir).is_dir():
            raise InvalidInput(f"{artifacts_dir} is not a directory of artifacts.")
        existing = self._find_run(result.run_id)
        if existing is not None and existing.data.tags.get(LOGGED_TAG) == "true":
            return existing.info.run_id
        tags = self._run_tags(result)
        if existing is None:
            run = self.client.create_run(
                self._experiment(), start_time=_ms(result.started_at), tags=tags, run_name=result.run_id
            )
            run_id = run.info.run_id
            logged_metrics = False
        else:
            run_id = existing.info.run_id
            logged_metrics = bool(existing.data.metrics)
        self._log_values(run_id, result, tags, with_metrics=not logged_metrics)
        summary = json.dumps(result.data_summary, indent=2, sort_keys=True, default=str)
        self.client.log_text(run_id, summary, "data_summary.json")
        self.client.log_text(run_id, result.to_json(), "result.json")
        if artifacts_dir is not None:
            self.client.log_artifacts(run_id, str(artifacts_dir))
        for name, location in result.artifacts.items():
            self._log_local_artifact(run_id, name, location)
        self.client.set_tag(run_id, LOGGED_TAG, "true")
        status = "FAILED" if result.decision == "error" else "FINISHED"
        self.client.set_terminated(run_id, status=status, end_time=_ms(result.finished_at))
        return run_id

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        if self._experiment_id:
            return self._experiment_id
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            try:
                self._experiment_id = self.client.create_experiment(
                    EXPERIMENT, artifact_location=self.artifact_location, tags={"issueops": "true"}
                )
                return self._experiment_id
            except MlflowException as exc:  # created by a concurrent process meanwhile
                if not _is_code(exc, "RESOURCE_ALREADY_EXISTS"):
                    raise
                experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        self._experiment_id = experiment.experiment_id
        return self._experiment_id

    def _find_run(self, run_id: str):
        runs = self.client.search_runs(
            [self._experiment()],
            f"tags.`{RUN_ID_TAG}` = '{run_id}'",
            max_results=1,
            order_by=["start_time ASC"],
        )
        return runs[0] if runs else None

    def _run_tags(self, result: RunResult) -> dict[str, str]:
        spec = result.spec or {}
        tags = {
            RUN_ID_TAG: result.run_id,
            "issueops.attempt": str(result.attempt),
            "issueops.decision": result.decision,
            "issueops.spec_hash": spec_hash(spec),
            "issueops.dataset": str(spec.get("dataset_id") or spec.get("environment") or ""),
            "issueops.algorithm": str(spec.get("algorithm") or ""),
            "issueops.model": result.model_name or model_name_for(spec),
            "issueops.evaluation_metric": result.evaluation_metric or "",
            "mlflow.note.content": _cut(result.message, MAX_TAG_VALUE) or "",
        }
        if result.issue is not None:
            tags["issueops.issue"] = str(result.issue)
        if result.repository:
            tags["issueops.repository"] = result.repository
        return {k: v[:MAX_TAG_VALUE] for k, v in tags.items()}

    def _log_values(
        self, run_id: str, result: RunResult, tags: dict[str, str], *, with_metrics: bool
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(k, v) for k, v in spec_params(result.spec or {}).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[start : start + BATCH])
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(tag_list), BATCH):
            self.client.log_batch(run_id, tags=tag_list[start : start + BATCH])
        if not with_metrics:
            return
        values = _numeric(result.metrics)
        if result.evaluation_metric and isinstance(result.metric_value, (int, float)):
            values.setdefault(_METRIC_KEY_BAD.sub("_", result.evaluation_metric), float(result.metric_value))
        for step in result.steps:
            if step.seconds is not None:
                values[f"step.{_METRIC_KEY_BAD.sub('_', step.name)}.seconds"] = float(step.seconds)
        stamp = _ms(result.finished_at) or int(datetime.now(UTC).timestamp() * 1000)
        metrics = [Metric(k, v, stamp, 0) for k, v in list(values.items())[:MAX_METRICS]]
        for start in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS])

    def _log_local_artifact(self, run_id: str, name: str, location: str) -> None:
        """Directories under their own name (model/), files under evaluation/ (logs under logs/);
        remote URIs are already recorded in result.json."""
        if name in NOT_LOGGED_ARTIFACTS or not location or "://" in location:
            return
        path = Path(location)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=_slug(name) or "artifacts")
        elif path.is_file():
            self.client.log_artifact(
                run_id, str(path), artifact_path="logs" if name == "log" else "evaluation"
            )
