"""Where production moves, for every door: approve and roll back from the CLI, the issue commands,
the MCP tools and the pipeline's promote and rollback steps all go through `Production`.

Each moves the registry's `production` alias under the model's lock (Registry) and, with
ISSUEOPS_SERVING=kserve, the model's InferenceService with it, and writes one audit record for the
move (`promote` or `rollback`) that says what the endpoint did. With ISSUEOPS_SERVING=local
nothing else moves: `issueops serve` follows the alias by itself.

Order: under the lock, the endpoint moves first and the registry after it. A KServe call that
fails (cluster unreachable, access denied, the version not packaged) refuses the whole move: the
registry is untouched, no audit record is written, and the error says production stays where it
was; running the same command again retries both. Should the registry's writes fail after the
endpoint moved, the endpoint is moved back before the error is raised, so the endpoint never
serves a version the registry does not have in production.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from issueops.config import Settings
from issueops.errors import InvalidInput, IssueOpsError
from issueops.registry.lifecycle import Registry
from issueops.registry.names import FollowEndpoint, RollbackResult, VersionInfo
from issueops.store import ObjectStore

SERVING_MODES = ("local", "kserve")


@dataclass
class Promotion:
    """An approved version in production, and what the serving endpoint did (None: local serving)."""

    version: VersionInfo
    endpoint: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KServeEndpoint:
    """The model's InferenceService, moved to the version production moves to: promoted (the canary
    dropped, all traffic to it), reverted to an earlier version, or deleted when none is left."""

    def __init__(self, settings: Settings, store: ObjectStore | None = None, *, api=None):
        self.settings, self._store, self.api = settings, store, api
        self.moves: list[str] = []

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            from issueops.store import open_store

            self._store = open_store(self.settings)
        return self._store

    def __call__(self, model: str, current: int | None, target: int | None) -> str:
        from issueops.serving import kserve

        namespace = self.settings.namespace
        where = f"InferenceService {namespace}/{kserve.service_name(model)}"
        try:
            if target is None:
                kserve.withdraw(model, namespace=namespace, api=self.api)
                done = f"{where} deleted: no version of {model} is in production"
            else:
                move = kserve.revert if current is not None and target < current else kserve.promote
                move(model, target, store=self.store, namespace=namespace, api=self.api)
                done = f"{where} serves version {target} with all traffic" + (
                    f" (was version {current})" if current is not None else ""
                )
        except IssueOpsError as error:
            stays = f"version {current}" if current is not None else "no version"
            _restate(
                error,
                f"{error} The endpoint did not move, so neither did the registry: {stays} of {model} "
                "stays in production. Run the same command again once the cause is fixed.",
            )
            raise
        self.moves.append(done)
        return done


def endpoint_for(settings: Settings, store: ObjectStore | None = None, *, api=None) -> KServeEndpoint | None:
    """What follows production on this serving mode: the InferenceService with kserve, nothing with
    local (`issueops serve` follows the alias itself)."""
    if settings.serving not in SERVING_MODES:
        raise InvalidInput(
            f"ISSUEOPS_SERVING must be {' or '.join(SERVING_MODES)}, not {settings.serving!r}."
        )
    return KServeEndpoint(settings, store, api=api) if settings.serving == "kserve" else None


class Production:
    """Moves a model's production version, and its endpoint with it, on this serving mode."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        store: ObjectStore | None = None,
        api=None,
    ):
        self.settings = settings
        self.registry = registry or Registry.from_settings(settings)
        self.store, self.api = store, api

    def promote(self, model: str, version: int | str, *, actor: str, reason: str | None = None) -> Promotion:
        """Approve `version` of `model` into production (the previous one is Archived)."""
        endpoint = endpoint_for(self.settings, self.store, api=self.api)
        info = self.registry.approve(model, version, actor, reason, endpoint=endpoint)
        served = _last(endpoint)
        message = f"Version {info.version} of `{info.model}` is approved and in production." + (
            f" {served}." if served else ""
        )
        return Promotion(info, served, message)

    def roll_back(
        self, model: str, to_version: int | str | None = None, *, actor: str, reason: str | None = None
    ) -> RollbackResult:
        """Production back to the version before (or `to_version`); the version left is Archived."""
        endpoint = endpoint_for(self.settings, self.store, api=self.api)
        result = self.registry.rollback_production(
            model, to_version, reason=reason, actor=actor, endpoint=endpoint
        )
        return _with_endpoint(result, endpoint)

    def roll_back_request(
        self,
        model: str,
        run_id: str,
        *,
        actor: str,
        reason: str | None = None,
        attempt_run_ids: tuple[str, ...] | list[str] = (),
    ) -> RollbackResult:
        """Undo what a failed request changed in production (Registry.rollback_request)."""
        endpoint = endpoint_for(self.settings, self.store, api=self.api)
        result = self.registry.rollback_request(
            model, run_id, reason=reason, actor=actor, attempt_run_ids=attempt_run_ids, endpoint=endpoint
        )
        return _with_endpoint(result, endpoint)


def _last(endpoint: FollowEndpoint | None) -> str | None:
    return endpoint.moves[-1] if isinstance(endpoint, KServeEndpoint) and endpoint.moves else None


def _with_endpoint(result: RollbackResult, endpoint: FollowEndpoint | None) -> RollbackResult:
    result.endpoint = _last(endpoint) if result.changed else None
    if result.endpoint:
        result.message = f"{result.message} {result.endpoint}."
    return result


def _restate(error: IssueOpsError, message: str) -> None:
    """The same error (its class says what the user sees) with the consequence added."""
    error.args = (message,)
    error.problems = [message]
