"""The model registry over MLflow: one tracking run per attempt, registered versions with
SageMaker's approval states, the `production` alias, rollback, and an audit trail of every change.

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
import logging
import threading
from pathlib import Path

from issueops.config import Settings
from issueops.errors import (
    Conflict,
    InvalidInput,
)
from issueops.pipeline.runs import RunOwner
from issueops.registry.audit import Audit
from issueops.registry.lock import RegistryLock, registry_lock
from issueops.registry.names import (
    APPROVED,
    APPROVER_TAG,
    ARCHIVED,
    MAX_TAG_VALUE,
    MODEL_ARTIFACT,
    PENDING,
    PRODUCTION,
    REJECTED,
    RUN_ID_TAG,
    STATUS_TAG,
    SYSTEM_ACTOR,
    WAS_PRODUCTION_TAG,
    FollowEndpoint,
    VersionInfo,
    Versions,
    _check_run_id,
    _cut,
    _is_code,
    _translated,
    check_model_name,
    model_name_for,
    spec_hash,
)
from issueops.registry.rollback import Rollback
from issueops.registry.tracking import Tracking, _numeric, default_artifact_location, prepare_database
from issueops.results import RunResult

log = logging.getLogger(__name__)


class Registry(Versions, Tracking, Audit, Rollback):
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
        self.registry_uri = registry_uri or Settings.from_env().mlflow_registry_uri or tracking_uri
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
    def approve(
        self,
        model: str,
        version: int | str,
        actor: str,
        reason: str | None = None,
        *,
        endpoint: FollowEndpoint | None = None,
    ) -> VersionInfo:
        """Approve a pending version: it becomes production, the previous production is Archived.
        `endpoint` moves the serving endpoint first (issueops.registry.promotion)."""
        name = self._existing_model(model)
        with self._locked(name):
            self._settle(name)
            return self._approve_locked(name, version, actor, reason, endpoint)

    def _approve_locked(
        self, name: str, version: int | str, actor: str, reason: str | None, endpoint=None
    ) -> VersionInfo:
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
        self._promote(
            name,
            number,
            actor=actor,
            reason=reason or "approved",
            run_id=mv.tags.get(RUN_ID_TAG),
            endpoint=endpoint,
        )
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

    @contextlib.contextmanager
    def _following(self, name: str, endpoint: FollowEndpoint | None, current: int | None, target: int | None):
        """Move the endpoint from `current` to `target` before the registry's writes in the block,
        and yield what it did; should a write fail, the endpoint goes back (as far as it can)."""
        if endpoint is None or current == target:
            yield None
            return
        served = endpoint(name, current, target)  # raises: the registry stays untouched
        try:
            yield served
        except BaseException:
            try:
                endpoint(name, target, current)
            except Exception as error:  # the registry's error is the one to report
                log.warning("%s: the endpoint could not go back to version %s: %s", name, current, error)
            raise

    def _promote(
        self,
        name: str,
        version: int,
        *,
        actor: str,
        reason: str,
        run_id: str | None,
        endpoint: FollowEndpoint | None = None,
    ) -> None:
        """Approve `version` and point production at it; the version it replaces becomes Archived."""
        previous = self._production_version(name)
        with self._following(name, endpoint, previous, version) as served:
            self._promote_written(name, version, previous, actor, reason, run_id, served)

    def _promote_written(self, name, version, previous, actor, reason, run_id, served) -> None:
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
            endpoint=served,
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
