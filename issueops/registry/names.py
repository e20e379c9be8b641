"""Model names and versions: the registry's constants and records, model_name_for, and the read side
(Versions: list, show, production, version, download) that the rest of Registry builds on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from issueops.errors import (
    Conflict,
    ExternalServiceError,
    InvalidInput,
    IssueOpsError,
    NotFound,
)
from issueops.logs import mask

EXPERIMENT = "issueops"
PRODUCTION = "production"
STATUS_TAG = "approval_status"


class ApprovalStatus(StrEnum):
    """A version's approval state, SageMaker's names, stored as the version tag `approval_status`:
    pending until approved; the one Approved version is production; Archived once it leaves
    production; Rejected is never deployed again."""

    PENDING = "PendingManualApproval"
    APPROVED = "Approved"
    ARCHIVED = "Archived"
    REJECTED = "Rejected"


PENDING, APPROVED, ARCHIVED, REJECTED = ApprovalStatus  # the names the registry's code reads best with
STATUSES = tuple(ApprovalStatus)

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

FollowEndpoint = Callable[[str, "int | None", "int | None"], str]
"""Moves a model's endpoint from one production version to another (None: none) and says what it
did; issueops.registry.promotion makes one per serving mode. Raising refuses the move."""


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
    endpoint: str | None = None  # promote/rollback with ISSUEOPS_SERVING=kserve: what the endpoint did

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
    endpoint: str | None = None  # what the serving endpoint did (issueops.registry.promotion)

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


class Versions:
    """Registry's names methods (a mixin: Registry in issueops.registry.lifecycle holds the client and the lock)."""

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
