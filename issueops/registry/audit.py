"""Audit: every registry action recorded on the registered model as an `audit.<n>` tag, read back in order."""

from __future__ import annotations

import json
import secrets

from issueops.registry.names import (
    AUDIT_PREFIX,
    MAX_ACTOR,
    MAX_AUDIT_VALUE,
    MAX_REASON,
    AuditRecord,
    _cut,
    _now,
    _translated,
)


def _audit_sequence(key: str) -> int:
    digits = key[len(AUDIT_PREFIX) :].split("-", 1)[0]
    return int(digits) if digits.isdigit() else 0


class Audit:
    """Registry's audit methods (a mixin: Registry in issueops.registry.lifecycle holds the client and the lock)."""

    @_translated("read the audit trail")
    def history(self, model: str) -> list[AuditRecord]:
        """Every change to `model`, oldest first."""
        name = self._existing_model(model)
        self._settle(name)
        return self._audit_records(name)

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
        endpoint: str | None = None,
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
            _cut(endpoint, MAX_REASON),
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
