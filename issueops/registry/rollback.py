"""Rollback: production moved back to the version before it, by hand or when a request fails.

A mixin of Registry (issueops.registry.lifecycle), which holds the MLflow client, the per-model lock
and the promotion both directions share; the previous production version is read from the audit
trail (issueops.registry.audit).
"""

from __future__ import annotations

from issueops.errors import Conflict
from issueops.registry.names import (
    APPROVED,
    ARCHIVED,
    PENDING,
    PRODUCTION,
    REJECTED,
    STATUS_TAG,
    WAS_PRODUCTION_TAG,
    FollowEndpoint,
    RollbackResult,
    _check_run_id,
    _is_code,
    _translated,
    check_model_name,
)


class Rollback:
    """Registry's rollback methods (a mixin: Registry in issueops.registry.lifecycle holds the client and the lock)."""

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
        endpoint: FollowEndpoint | None = None,
    ) -> None:
        """Production from `current` back to `target` (None: no production version at all)."""
        with self._following(name, endpoint, current, target) as served:
            self._move_back_written(name, current, target, actor, reason, run_id, left_status, served)

    def _move_back_written(self, name, current, target, actor, reason, run_id, left_status, served) -> None:
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
            endpoint=served,
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
        endpoint: FollowEndpoint | None = None,
    ) -> RollbackResult:
        """Point production back at the version that was in production before the current one, or
        at `to_version` (which must have been in production before and not be Rejected). The version
        left is Archived. "Before" comes from the audit trail: promotions push a version on the
        production timeline, rollbacks pop back to an earlier entry; Rejected versions are skipped.
        """
        name = self._existing_model(model)
        with self._locked(name):
            self._settle(name)
            return self._rollback_locked(
                name, to_version, reason=reason, actor=actor, run_id=run_id, endpoint=endpoint
            )

    def _rollback_locked(
        self, name: str, to_version, *, reason: str | None, actor: str, run_id: str | None, endpoint=None
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
            name,
            current,
            target,
            actor=actor,
            reason=reason,
            run_id=run_id,
            left_status=ARCHIVED,
            endpoint=endpoint,
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
        endpoint: FollowEndpoint | None = None,
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
            return self._rollback_request_locked(
                name, ids, run_id, reason=reason, actor=actor, endpoint=endpoint
            )

    def _rollback_request_locked(
        self, name: str, ids: list[str], run_id: str, *, reason: str | None, actor: str, endpoint=None
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
                endpoint=endpoint,
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
