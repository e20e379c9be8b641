"""The model registry over MLflow: one tracking run per attempt, registered versions with the
seed's approval states, the `production` alias, rollback, and an audit trail of every change.

Approval state is the version tag `approval_status`: PendingManualApproval, then Approved (the one
version the alias `production` points at), Archived once it leaves production, or Rejected (never
deployed again). Everything lives in MLflow, so a SQLite file and an MLflow server behave alike.

The audit trail is kept in MLflow too: one registered-model tag per event, key `audit.<seq>-<hex>`,
value a JSON record. MLflow's SQL schema stores registered-model tag values as VARCHAR(5000), so
reasons and actors are cut to fit.

MLflow has no transactions: every change to a model (register, approve, promote, archive, reject,
roll back) reads its state and writes it under that model's lock (issueops.registry.lock), across
processes and pods, and reads the state again once it holds the lock. A version registered for a
run that should approve it (`approver`) and left pending when that run's process died is Rejected,
with an audit record, the next time anything touches its model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from issueops.config import Settings
from issueops.errors import (
    Conflict,
    ExternalServiceError,
    InvalidInput,
    IssueOpsError,
    NotFound,
)
from issueops.logs import mask
from issueops.pipeline.runs import RunOwner
from issueops.registry.lock import FileLock, RegistryLock, registry_lock, sqlite_path
from issueops.reporting.results import RunResult

EXPERIMENT = "issueops"
PRODUCTION = "production"
STATUS_TAG = "approval_status"
PENDING = "PendingManualApproval"
APPROVED = "Approved"
ARCHIVED = "Archived"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, ARCHIVED, REJECTED)

RUN_ID_TAG = "issueops.run_id"
WAS_PRODUCTION_TAG = "issueops.was_production"
APPROVER_TAG = "issueops.approver"  # the run process that approves a pending version when it passes
SYSTEM_ACTOR = "issueops"
LOGGED_TAG = "issueops.logged"
MODEL_ARTIFACT = "model"
AUDIT_PREFIX = "audit."
MAX_AUDIT_VALUE = 5000  # registered_model_tags.value is VARCHAR(5000) in MLflow's SQL schema
MAX_REASON = 1000
MAX_ACTOR = 200
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 5000
BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
MAX_METRICS = 1000
NOT_LOGGED_ARTIFACTS = {"processed"}  # prepared data stays in the object store; its URI is in result.json

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_METRIC_KEY_BAD = re.compile(r"[^\w./\- ]")
_DATA_SUFFIXES = {".csv", ".tsv", ".parquet", ".json", ".jsonl", ".gz", ".zip", ".bz2", ".xz", ".txt"}
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "ABORTED"}


@dataclass
class VersionInfo:
    """One registered model version as issueops sees it."""

    model: str
    version: int
    status: str  # one of STATUSES, or "" for a version registered outside issueops
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None  # our run id (issueops.run_id)
    mlflow_run_id: str | None = None
    issue: int | None = None
    dataset: str | None = None
    spec_hash: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = ""
    created_at: str | None = None

    @property
    def in_production(self) -> bool:
        return PRODUCTION in self.aliases

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditRecord:
    """One change to a registered model. For promote/rollback, from/to are the production versions
    before and after; for register/approve/archive/reject, to_version is the version changed."""

    time: str
    action: str  # register | approve | promote | archive | reject | rollback
    model: str
    from_version: int | None = None
    to_version: int | None = None
    reason: str | None = None
    actor: str | None = None
    run_id: str | None = None
    status: str | None = None  # the approval status the version was given, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RollbackResult:
    model: str
    from_version: int | None
    to_version: int | None
    changed: bool
    message: str
    rejected: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelSummary:
    name: str
    production: int | None
    latest_version: int | None
    versions: int
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelInfo:
    name: str
    production: int | None
    versions: list[VersionInfo]
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no whitespace): same spec, same hash."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_name_for(spec: dict[str, Any]) -> str:
    """`spec["model_name"]`, else `<dataset>-<algorithm>` in kebab case: breast-cancer-random-forest."""
    if spec.get("model_name"):
        return check_model_name(str(spec["model_name"]))
    source = str(spec.get("dataset_id") or spec.get("environment") or "model")
    last = re.split(r"[/:\\]", source.rstrip("/"))[-1] or "model"
    path = PurePosixPath(last)
    while path.suffix.lower() in _DATA_SUFFIXES:
        path = path.with_suffix("")
    parts = [_slug(path.name), _slug(str(spec.get("algorithm") or ""))]
    name = "-".join(p for p in parts if p)[:100].strip("-")
    return name or "model"


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InvalidInput(
            f"{str(name)[:80]!r} is not a valid model name: use up to 100 letters, digits, '.', '_' or '-'."
        )
    return name


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidInput(f"{str(run_id)[:80]!r} is not a valid run id.")
    return run_id


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = mask(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _mlflow_error(exc: Exception, what: str) -> IssueOpsError:
    code = getattr(exc, "error_code", "")
    detail = mask(str(getattr(exc, "message", exc)).strip().splitlines()[0] if str(exc).strip() else "")[:300]
    message = f"Could not {what}: {detail}" if detail else f"Could not {what}."
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFound(message)
    if code == "RESOURCE_ALREADY_EXISTS":
        return Conflict(message)
    if code == "INVALID_PARAMETER_VALUE":
        return InvalidInput(message)
    return ExternalServiceError(f"MLflow: {message}", transient=code in _TRANSIENT_CODES)


def _translated(what: str):
    """Re-raise MLflow (and I/O) failures of a public method once, as issueops errors."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            try:
                return method(*args, **kwargs)
            except IssueOpsError:
                raise
            except MlflowException as exc:
                raise _mlflow_error(exc, what) from exc
            except OSError as exc:  # includes requests' connection errors to an MLflow server
                raise ExternalServiceError(
                    f"MLflow: could not {what}: {mask(str(exc))[:300]}", transient=True
                ) from exc

        return wrapper

    return decorate


def _is_code(exc: Exception, code: str) -> bool:
    return getattr(exc, "error_code", None) == code


_prepared: set[tuple[str, str]] = set()
_preparing = threading.Lock()


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


class Registry:
    """Runs, versions, approval, production alias and audit trail of issueops models in MLflow."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        registry_uri: str | None = None,
        artifact_location: str | None = None,
        lock: RegistryLock | None = None,
        settings: Settings | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
        self.artifact_location = artifact_location or default_artifact_location(tracking_uri)
        self.lock = lock or registry_lock(tracking_uri, settings)
        self._client = None
        self._experiment_id: str | None = None
        self._held = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Registry:
        settings = settings or Settings.from_env()
        return cls(settings.mlflow_tracking_uri, settings=settings)

    @property
    def client(self):
        """The MlflowClient, made once the database's schema exists (MLflow opens the store at once)."""
        if self._client is None:
            from mlflow import MlflowClient

            prepare_database(self.tracking_uri, self.registry_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    @contextlib.contextmanager
    def _locked(self, name: str):
        """Hold the model's lock (re-entrant within a thread): state read before it may be stale."""
        held = self._held.__dict__.setdefault("names", set())
        if name in held:
            yield
            return
        with self.lock.hold(name):
            held.add(name)
            try:
                yield
            finally:
                held.discard(name)

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

    # versions

    @_translated("register the model version")
    def register_version(
        self,
        model_name: str | None,
        result: RunResult,
        mlflow_run_id: str,
        model_dir: Path | None,
        *,
        approve: bool,
        actor: str,
        reason: str | None = None,
        approver: RunOwner | None = None,
    ) -> VersionInfo:
        """A new version of `model_name` (default: from the spec) from the run's model artifact.

        approve=True puts it in production at once and archives the previous production version;
        approve=False leaves it PendingManualApproval and production unchanged. Registering the
        same run id again returns the version already registered. `approver` is the process of the
        run that will approve the pending version itself: if it dies first, the version is Rejected
        on the model's next use instead of waiting forever (None: a person approves it).
        """
        name = check_model_name(model_name or result.model_name or model_name_for(result.spec or {}))
        _check_run_id(result.run_id)
        source = None
        if self._version_for_run(name, result.run_id) is None:  # the upload stays outside the lock
            self._ensure_registered_model(name)
            source = self._model_source(mlflow_run_id, model_dir)
        with self._locked(name):
            self._settle(name)
            return self._register_locked(
                name, result, mlflow_run_id, source, approve, actor, reason, approver
            )

    def _register_locked(self, name, result, mlflow_run_id, source, approve, actor, reason, approver):
        existing = self._version_for_run(name, result.run_id)
        if existing is None:
            tags = self._version_tags(result)
            if approver is not None and not approve:
                tags[APPROVER_TAG] = approver.to_json()
            created = self.client.create_model_version(
                name,
                source or self._model_source(mlflow_run_id, None),
                run_id=mlflow_run_id,
                tags=tags,
                description=_cut(result.message, MAX_TAG_VALUE),
            )
            version = int(created.version)
            status = PENDING
        else:
            version, status = int(existing.version), existing.tags.get(STATUS_TAG, "")
        if not any(r.action == "register" and r.to_version == version for r in self._audit_records(name)):
            self._audit(
                name,
                "register",
                to_version=version,
                run_id=result.run_id,
                actor=actor,
                status=PENDING,
                reason=f"run {result.run_id} ({result.decision}: {result.evaluation_metric} = {result.metric_value})",
            )
        if approve and status in (PENDING, ""):
            self._promote(
                name,
                version,
                actor=actor,
                run_id=result.run_id,
                reason=reason or "auto-approved: the run passed evaluation",
            )
        return self._version_info(name, version)

    def _version_for_run(self, name: str, run_id: str):
        found = self.client.search_model_versions(
            f"name = '{name}' and tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=10
        )
        return min(found, key=lambda v: int(v.version)) if found else None

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name, tags={"issueops.managed": "true"}, description="Registered by issueops."
            )
        except MlflowException as exc:
            if not _is_code(exc, "RESOURCE_ALREADY_EXISTS"):
                raise

    def _model_source(self, mlflow_run_id: str, model_dir: Path | None) -> str:
        """runs:/<id>/model, uploading model_dir first unless the run already holds the model."""
        self.client.get_run(mlflow_run_id)  # NotFound for an unknown run
        if not self.client.list_artifacts(mlflow_run_id, MODEL_ARTIFACT):
            if model_dir is None or not Path(model_dir).is_dir() or not any(Path(model_dir).iterdir()):
                raise InvalidInput(
                    f"MLflow run {mlflow_run_id} holds no model and no model directory was given"
                    + (f" ({model_dir} is empty or missing)." if model_dir else ".")
                )
            self.client.log_artifacts(mlflow_run_id, str(model_dir), artifact_path=MODEL_ARTIFACT)
        return f"runs:/{mlflow_run_id}/{MODEL_ARTIFACT}"

    def _version_tags(self, result: RunResult) -> dict[str, str]:
        spec = result.spec or {}
        tags = {
            STATUS_TAG: PENDING,
            RUN_ID_TAG: result.run_id,
            "issueops.attempt": str(result.attempt),
            "issueops.dataset": str(spec.get("dataset_id") or spec.get("environment") or ""),
            "issueops.algorithm": str(spec.get("algorithm") or ""),
            "issueops.spec_hash": spec_hash(spec),
            "issueops.evaluation_metric": result.evaluation_metric or "",
        }
        if result.issue is not None:
            tags["issueops.issue"] = str(result.issue)
        if result.repository:
            tags["issueops.repository"] = result.repository
        if isinstance(result.metric_value, (int, float)):
            tags["issueops.metric_value"] = repr(float(result.metric_value))
        for key, value in list(_numeric(result.metrics).items())[:100]:
            tags[f"metric.{key}"] = repr(value)
        return tags

    @_translated("approve the model version")
    def approve(self, model: str, version: int | str, actor: str, reason: str | None = None) -> VersionInfo:
        """Approve a pending version: it becomes production, the previous production is Archived."""
        name = self._existing_model(model)
        with self._locked(name):
            self._settle(name)
            return self._approve_locked(name, version, actor, reason)

    def _approve_locked(self, name: str, version: int | str, actor: str, reason: str | None) -> VersionInfo:
        name, number = self._existing_version(name, version)
        mv = self.client.get_model_version(name, str(number))
        status = mv.tags.get(STATUS_TAG, "")
        current = self._production_version(name)
        if current == number:
            return self._version_info(name, number)
        if status == REJECTED:
            raise Conflict(f"Version {number} of {name} was Rejected and cannot be approved.")
        if status == ARCHIVED:
            raise Conflict(
                f"Version {number} of {name} is Archived; use `registry rollback {name} --to {number}` "
                "to put it back in production."
            )
        self._promote(name, number, actor=actor, reason=reason or "approved", run_id=mv.tags.get(RUN_ID_TAG))
        return self._version_info(name, number)

    @_translated("archive the model version")
    def archive(self, model: str, version: int | str, actor: str, reason: str | None = None) -> VersionInfo:
        """Archive a version that is not in production."""
        return self._retire(model, version, ARCHIVED, "archive", actor=actor, reason=reason)

    @_translated("reject the model version")
    def reject(self, model: str, version: int | str, actor: str, reason: str | None = None) -> VersionInfo:
        """Reject a version that is not in production: it can never be approved or rolled back to."""
        return self._retire(model, version, REJECTED, "reject", actor=actor, reason=reason)

    def _retire(
        self, model, version, status: str, action: str, *, actor: str, reason: str | None
    ) -> VersionInfo:
        name = self._existing_model(model)
        with self._locked(name):
            self._settle(name)
            return self._retire_locked(name, version, status, action, actor=actor, reason=reason)

    def _retire_locked(
        self, name: str, version, status: str, action: str, *, actor: str, reason: str | None
    ) -> VersionInfo:
        name, number = self._existing_version(name, version)
        if self._production_version(name) == number:
            raise Conflict(
                f"Version {number} of {name} is in production; approve a replacement or roll back "
                f"before you {action} it."
            )
        mv = self.client.get_model_version(name, str(number))
        current = mv.tags.get(STATUS_TAG, "")
        if current == status:
            return self._version_info(name, number)
        if current == REJECTED:
            raise Conflict(f"Version {number} of {name} was Rejected; it stays Rejected.")
        self._set_status(name, number, status)
        self._audit(
            name,
            action,
            to_version=number,
            status=status,
            actor=actor,
            reason=reason,
            run_id=mv.tags.get(RUN_ID_TAG),
        )
        return self._version_info(name, number)

    # production and rollback

    def _promote(self, name: str, version: int, *, actor: str, reason: str, run_id: str | None) -> None:
        """Approve `version` and point production at it; the version it replaces becomes Archived."""
        previous = self._production_version(name)
        self._set_status(name, version, APPROVED)
        self.client.set_model_version_tag(name, str(version), WAS_PRODUCTION_TAG, "true")
        self._audit(
            name, "approve", to_version=version, status=APPROVED, actor=actor, reason=reason, run_id=run_id
        )
        self.client.set_registered_model_alias(name, PRODUCTION, str(version))
        self._audit(
            name,
            "promote",
            from_version=previous,
            to_version=version,
            actor=actor,
            reason=reason,
            run_id=run_id,
        )
        if previous is not None and previous != version:
            self._set_status(name, previous, ARCHIVED)
            self._audit(
                name,
                "archive",
                to_version=previous,
                status=ARCHIVED,
                actor=actor,
                run_id=run_id,
                reason=f"replaced in production by version {version}",
            )

    def _move_back(
        self,
        name: str,
        current: int,
        target: int | None,
        *,
        actor: str,
        reason: str | None,
        run_id: str | None,
        left_status: str,
    ) -> None:
        """Production from `current` back to `target` (None: no production version at all)."""
        if target is None:
            self.client.delete_registered_model_alias(name, PRODUCTION)
        else:
            self._set_status(name, target, APPROVED)
            self.client.set_registered_model_alias(name, PRODUCTION, str(target))
        self._audit(
            name,
            "rollback",
            from_version=current,
            to_version=target,
            actor=actor,
            reason=reason,
            run_id=run_id,
            status=APPROVED if target is not None else None,
        )
        self._set_status(name, current, left_status)
        self._audit(
            name,
            "archive" if left_status == ARCHIVED else "reject",
            to_version=current,
            status=left_status,
            actor=actor,
            run_id=run_id,
            reason=f"rolled back from production to version {target}" if target else "rolled back",
        )

    @_translated("roll back production")
    def rollback_production(
        self,
        model: str,
        to_version: int | str | None = None,
        *,
        reason: str | None = None,
        actor: str,
        run_id: str | None = None,
    ) -> RollbackResult:
        """Point production back at the version that was in production before the current one, or
        at `to_version` (which must have been in production before and not be Rejected). The version
        left is Archived. "Before" comes from the audit trail: promotions push a version on the
        production timeline, rollbacks pop back to an earlier entry; Rejected versions are skipped.
        """
        name = self._existing_model(model)
        with self._locked(name):
            self._settle(name)
            return self._rollback_locked(name, to_version, reason=reason, actor=actor, run_id=run_id)

    def _rollback_locked(
        self, name: str, to_version, *, reason: str | None, actor: str, run_id: str | None
    ) -> RollbackResult:
        current = self._production_version(name)
        if current is None:
            raise Conflict(f"{name} has no production version; there is nothing to roll back.")
        if to_version is None:
            target = self._previous_production(name, current)
            if target is None:
                raise Conflict(
                    f"{name} has no earlier production version to roll back to; "
                    f"version {current} stays in production."
                )
        else:
            name, target = self._existing_version(name, to_version)
            mv = self.client.get_model_version(name, str(target))
            status = mv.tags.get(STATUS_TAG, "")
            if target == current:
                raise Conflict(f"Version {target} of {name} is already in production.")
            if status == REJECTED:
                raise Conflict(
                    f"Version {target} of {name} was Rejected; production stays at version {current}."
                )
            if mv.tags.get(WAS_PRODUCTION_TAG) != "true":
                raise Conflict(
                    f"Version {target} of {name} has never been in production, so it is not a rollback "
                    f"target; approve it instead. Production stays at version {current}."
                )
        self._move_back(
            name, current, target, actor=actor, reason=reason, run_id=run_id, left_status=ARCHIVED
        )
        return RollbackResult(
            name,
            current,
            target,
            True,
            f"Production of {name} rolled back from version {current} to version {target}.",
        )

    @_translated("roll back the failed request")
    def rollback_request(
        self,
        model: str,
        run_id: str,
        *,
        reason: str | None = None,
        actor: str,
        attempt_run_ids: tuple[str, ...] | list[str] = (),
    ) -> RollbackResult:
        """Undo what a failed request changed, and only that.

        The request is `run_id` plus any `attempt_run_ids` (its earlier attempts). Versions they
        registered become Rejected; if one of them is in production, production returns to the
        version it was on before the request's first promotion (or to none). Otherwise production is
        kept exactly as it is.
        """
        name = check_model_name(model)
        ids = [_check_run_id(r) for r in (run_id, *attempt_run_ids)]
        if not self._model_exists(name):
            return RollbackResult(
                name, None, None, False, f"No model {name} is registered, so there is nothing to roll back."
            )
        with self._locked(name):
            self._settle(name)
            return self._rollback_request_locked(name, ids, run_id, reason=reason, actor=actor)

    def _rollback_request_locked(
        self, name: str, ids: list[str], run_id: str, *, reason: str | None, actor: str
    ) -> RollbackResult:
        ours = sorted({int(v.version) for r in ids for v in self._versions_for_run(name, r)})
        current = self._production_version(name)
        target, changed = current, False
        if current is not None and current in ours:
            moves = [
                r
                for r in self._audit_records(name)
                if r.action in ("promote", "rollback") and r.to_version in ours
            ]
            before = moves[0].from_version if moves else None
            target = (
                before
                if before is not None and self._usable(name, before, exclude=ours)
                else (self._previous_production(name, current, exclude=ours))
            )
            self._move_back(
                name,
                current,
                target,
                actor=actor,
                run_id=run_id,
                left_status=REJECTED,
                reason=reason or f"request {run_id} failed",
            )
            changed = True
        rejected = []
        for version in ours:
            status = self.client.get_model_version(name, str(version)).tags.get(STATUS_TAG, "")
            if version == current and changed:
                rejected.append(version)
            elif status in (PENDING, ""):
                self._set_status(name, version, REJECTED)
                self._audit(
                    name,
                    "reject",
                    to_version=version,
                    status=REJECTED,
                    actor=actor,
                    run_id=run_id,
                    reason=reason or f"request {run_id} failed",
                )
                rejected.append(version)
        if changed:
            message = (
                f"Production of {name} went back from version {current} to "
                + (f"version {target}" if target is not None else "no version")
                + f" because request {run_id} failed."
            )
        elif current is not None:
            message = f"Kept version {current} of {name} in production: request {run_id} had not changed it."
        else:
            message = f"{name} has no production version; request {run_id} changed none."
        if rejected:
            message += " Rejected version(s) " + ", ".join(map(str, rejected)) + "."
        return RollbackResult(name, current, target, changed, message, rejected)

    def _previous_production(self, name: str, current: int, exclude: list[int] = ()) -> int | None:
        """The version that was in production before `current`, from the audit trail."""
        timeline: list[int] = []
        for record in self._audit_records(name):
            if record.action not in ("promote", "rollback"):
                continue
            if record.to_version is None:
                timeline.clear()
            elif record.to_version in timeline:
                del timeline[timeline.index(record.to_version) + 1 :]
            else:
                timeline.append(record.to_version)
        if current in timeline:
            timeline = timeline[: timeline.index(current)]
        for version in reversed(timeline):
            if version != current and self._usable(name, version, exclude=exclude):
                return version
        return None

    def _usable(self, name: str, version: int, *, exclude=()) -> bool:
        from mlflow.exceptions import MlflowException

        if version in exclude:
            return False
        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if _is_code(exc, "RESOURCE_DOES_NOT_EXIST"):
                return False
            raise
        return mv.tags.get(STATUS_TAG) != REJECTED

    def _settle(self, name: str) -> list[int]:
        """Reject the pending versions whose approving run died before it approved them; their
        numbers. Cheap when there are none: one search of the model's pending versions."""
        if not self._orphans(name):
            return []
        settled = []
        with self._locked(name):
            for mv in self._orphans(name):  # again, under the lock
                owner = RunOwner.from_json(mv.tags.get(APPROVER_TAG))
                run_id = mv.tags.get(RUN_ID_TAG)
                self._set_status(name, int(mv.version), REJECTED)
                self._audit(
                    name,
                    "reject",
                    to_version=int(mv.version),
                    status=REJECTED,
                    actor=SYSTEM_ACTOR,
                    run_id=run_id,
                    reason=f"run {run_id} ended without approving version {mv.version}: "
                    f"its process ({owner.describe()}) is gone",
                )
                settled.append(int(mv.version))
        return settled

    def _orphans(self, name: str) -> list:
        pending = self.client.search_model_versions(f"name = '{name}' and tags.`{STATUS_TAG}` = '{PENDING}'")
        return [
            mv
            for mv in pending
            if (owner := RunOwner.from_json(mv.tags.get(APPROVER_TAG))) is not None and owner.alive() is False
        ]

    # reading

    @_translated("list the registered models")
    def list_models(self) -> list[ModelSummary]:
        summaries = []
        for rm in self._paged(self.client.search_registered_models):
            numbers = [
                int(v.version) for v in self._paged(self.client.search_model_versions, f"name = '{rm.name}'")
            ]
            production = rm.aliases.get(PRODUCTION)
            summaries.append(
                ModelSummary(
                    rm.name,
                    int(production) if production is not None else None,
                    max(numbers, default=None),
                    len(numbers),
                    rm.description,
                )
            )
        return sorted(summaries, key=lambda s: s.name)

    @_translated("show the model")
    def show(self, model: str) -> ModelInfo:
        """Every version of `model` with its status, aliases and metrics, newest first."""
        name = self._existing_model(model)
        self._settle(name)
        rm = self.client.get_registered_model(name)
        aliases = self._aliases_by_version(rm)
        versions = [
            self._to_info(mv, aliases)
            for mv in self._paged(self.client.search_model_versions, f"name = '{name}'")
        ]
        production = rm.aliases.get(PRODUCTION)
        return ModelInfo(
            name,
            int(production) if production is not None else None,
            sorted(versions, key=lambda v: v.version, reverse=True),
            rm.description,
        )

    @_translated("read the production version")
    def production(self, model: str) -> VersionInfo | None:
        """The version in production, or None (also when no such model is registered)."""
        name = check_model_name(model)
        if not self._model_exists(name):
            return None
        self._settle(name)
        version = self._production_version(name)
        return None if version is None else self._version_info(name, version)

    @_translated("read the production versions")
    def production_versions(self) -> dict[str, int]:
        """Every model's production version, from one search of the registered models (cheap
        enough for an endpoint to ask every few seconds)."""
        return {
            rm.name: int(rm.aliases[PRODUCTION])
            for rm in self._paged(self.client.search_registered_models)
            if PRODUCTION in rm.aliases
        }

    @_translated("read the model version")
    def version(self, model: str, version: int | str) -> VersionInfo:
        name, number = self._existing_version(model, version)
        self._settle(name)
        return self._version_info(name, number)

    @_translated("read the audit trail")
    def history(self, model: str) -> list[AuditRecord]:
        """Every change to `model`, oldest first."""
        name = self._existing_model(model)
        self._settle(name)
        return self._audit_records(name)

    @_translated("download the model")
    def download(self, model: str, version: int | str, dest: Path) -> Path:
        """Download a version (a number, 'latest' or an alias such as 'production') into dest;
        returns the local model directory."""
        name, number = self._resolve(model, version)
        mv = self.client.get_model_version(name, str(number))
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        parsed = urlparse(mv.source)
        if parsed.scheme == "runs":
            path = parsed.path.lstrip("/").split("/", 1)
            local = self.client.download_artifacts(path[0], path[1] if len(path) > 1 else "", str(dest))
        else:
            import mlflow.artifacts

            local = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        return Path(local)

    # internals

    def _model_exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException as exc:
            if _is_code(exc, "RESOURCE_DOES_NOT_EXIST"):
                return False
            raise

    def _existing_model(self, model: str) -> str:
        name = check_model_name(model)
        if not self._model_exists(name):
            raise NotFound(f"There is no registered model named '{name}'.")
        return name

    def _parse_version(self, name: str, version: int | str) -> int:
        """A version number of `name`; 'other-model/3' or 'models:/other-model/3' naming another
        model is refused."""
        text = str(version).strip()
        if text.startswith("models:/"):
            text = text[len("models:/") :]
        if "/" in text:
            owner, text = text.rsplit("/", 1)
            if owner != name:
                raise InvalidInput(f"Version {text} belongs to model {owner}, not to {name}.")
        if not text.isdigit() or int(text) < 1:
            raise InvalidInput(f"'{str(version)[:40]}' is not a version number of {name}.")
        return int(text)

    def _existing_version(self, model: str, version: int | str) -> tuple[str, int]:
        from mlflow.exceptions import MlflowException

        name = self._existing_model(model)
        number = self._parse_version(name, version)
        try:
            self.client.get_model_version(name, str(number))
        except MlflowException as exc:
            if _is_code(exc, "RESOURCE_DOES_NOT_EXIST"):
                raise NotFound(f"Model {name} has no version {number}.") from None
            raise
        return name, number

    def _resolve(self, model: str, version: int | str) -> tuple[str, int]:
        name = self._existing_model(model)
        text = str(version).strip()
        if text.isdigit() or "/" in text:
            return self._existing_version(name, text)
        if text == "latest":
            numbers = [
                int(v.version) for v in self._paged(self.client.search_model_versions, f"name = '{name}'")
            ]
            if not numbers:
                raise NotFound(f"Model {name} has no versions.")
            return name, max(numbers)
        target = self.client.get_registered_model(name).aliases.get(text)
        if target is None:
            raise NotFound(f"Model {name} has no version with the alias '{text[:40]}'.")
        return name, int(target)

    def _production_version(self, name: str) -> int | None:
        version = self.client.get_registered_model(name).aliases.get(PRODUCTION)
        return int(version) if version is not None else None

    def _versions_for_run(self, name: str, run_id: str) -> list:
        return list(
            self.client.search_model_versions(
                f"name = '{name}' and tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=100
            )
        )

    def _set_status(self, name: str, version: int, status: str) -> None:
        self.client.set_model_version_tag(name, str(version), STATUS_TAG, status)

    def _version_info(self, name: str, version: int) -> VersionInfo:
        rm = self.client.get_registered_model(name)
        return self._to_info(self.client.get_model_version(name, str(version)), self._aliases_by_version(rm))

    @staticmethod
    def _aliases_by_version(rm) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            found.setdefault(int(version), []).append(alias)
        return found

    @staticmethod
    def _to_info(mv, aliases: dict[int, list[str]]) -> VersionInfo:
        tags = mv.tags or {}
        metrics = {}
        for key, value in tags.items():
            if key.startswith("metric."):
                try:
                    metrics[key[len("metric.") :]] = float(value)
                except ValueError:
                    continue
        issue = tags.get("issueops.issue")
        created = mv.creation_timestamp
        return VersionInfo(
            model=mv.name,
            version=int(mv.version),
            status=tags.get(STATUS_TAG, ""),
            aliases=sorted(aliases.get(int(mv.version), [])),
            run_id=tags.get(RUN_ID_TAG),
            mlflow_run_id=mv.run_id,
            issue=int(issue) if issue and issue.isdigit() else None,
            dataset=tags.get("issueops.dataset"),
            spec_hash=tags.get("issueops.spec_hash"),
            metrics={k: v for k, v in metrics.items() if not math.isnan(v)},
            source=mv.source or "",
            created_at=datetime.fromtimestamp(created / 1000, UTC).isoformat(timespec="seconds")
            if created
            else None,
        )

    @staticmethod
    def _paged(search, filter_string: str | None = None) -> list:
        found, token = [], None
        while True:
            page = search(filter_string=filter_string, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _audit(
        self,
        name: str,
        action: str,
        *,
        actor: str,
        reason: str | None = None,
        from_version: int | None = None,
        to_version: int | None = None,
        run_id: str | None = None,
        status: str | None = None,
    ) -> AuditRecord:
        record = AuditRecord(
            _now(),
            action,
            name,
            from_version,
            to_version,
            _cut(reason, MAX_REASON),
            _cut(actor, MAX_ACTOR) or "unknown",
            run_id,
            status,
        )
        value = json.dumps(record.to_dict(), ensure_ascii=False)
        if len(value) > MAX_AUDIT_VALUE:  # only a pathological name could get here
            record.reason = _cut(record.reason, 200)
            value = json.dumps(record.to_dict(), ensure_ascii=False)[:MAX_AUDIT_VALUE]
        tags = self.client.get_registered_model(name).tags or {}
        sequence = 1 + max((_audit_sequence(k) for k in tags if k.startswith(AUDIT_PREFIX)), default=0)
        self.client.set_registered_model_tag(
            name, f"{AUDIT_PREFIX}{sequence:06d}-{secrets.token_hex(2)}", value
        )
        return record

    def _audit_records(self, name: str) -> list[AuditRecord]:
        tags = self.client.get_registered_model(name).tags or {}
        records = []
        for key, value in tags.items():
            if not key.startswith(AUDIT_PREFIX):
                continue
            try:
                data = json.loads(value)
            except (TypeError, ValueError):
                continue
            known = AuditRecord.__dataclass_fields__
            try:
                record = AuditRecord(**{k: v for k, v in data.items() if k in known})
            except TypeError:  # not one of ours
                continue
            records.append((_audit_sequence(key), str(record.time), key, record))
        return [r[-1] for r in sorted(records, key=lambda r: r[:3])]


def _audit_sequence(key: str) -> int:
    digits = key[len(AUDIT_PREFIX) :].split("-", 1)[0]
    return int(digits) if digits.isdigit() else 0
