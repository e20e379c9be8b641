"""Logging with every known secret masked, on any handler, in any format.

JSON lines (ISSUEOPS_LOG_JSON) carry the fields a log pipeline filters by: `timestamp`, `level`,
`service`, `execution_id`, `issue_number`, `training_job_name`, `message`, `duration_ms` and
`status`, null when the code that logged did not know them. Code that knows them passes them as
`extra=` on one call, or for everything logged within a block (also by the functions it calls, in
its thread or asyncio task) with `log_context(...)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

MASK = "***"
_secrets: set[str] = set()
_lock = threading.Lock()
# Credentials that sit inside URLs or headers even when nobody registered them.
_PATTERNS = [
    re.compile(r"(https://hooks\.slack\.com/)[^\s\"'<>]+"),
    re.compile(r"(https://discord(?:app)?\.com/api/webhooks/)[^\s\"'<>]+"),
    re.compile(r"(https://[\w.-]*(?:logic\.azure\.com|webhook\.office\.com)[^\s\"'<>?]*\?)[^\s\"'<>]+"),
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"),
    re.compile(r"((?:token|Bearer|Authorization:?)\s+)[A-Za-z0-9_\-.]{8,}", re.IGNORECASE),
    re.compile(r"\b(gh[pousr]_)[A-Za-z0-9]{20,}"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret so that it never appears in a log line or error we print."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """Replace every registered secret and credential-looking URL part with ***."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(2) if m.lastindex == 2 else ""), text)
    return text


# Fields of a JSON log line beyond timestamp, level, service and message.
CONTEXT_FIELDS = ("execution_id", "issue_number", "training_job_name", "duration_ms", "status")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "issueops_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every record logged within the block (in this thread or asyncio task) carries these fields
    (CONTEXT_FIELDS), unless a call's own `extra=` gives them."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"log_context takes {', '.join(CONTEXT_FIELDS)}, not {', '.join(sorted(unknown))}")
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


_base_factory = logging.getLogRecordFactory()


def _masked_record(*args, **kwargs) -> logging.LogRecord:
    # Masking at record creation covers every handler, including ones added later (pytest's).
    record = _base_factory(*args, **kwargs)
    record.issueops_context = _context.get()  # taken here: a handler may format it on another thread
    record.msg = mask(record.getMessage())
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    return record


logging.setLogRecordFactory(_masked_record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the fields above, then `logger` and, with a traceback, `exception`."""

    def __init__(self, service: str = "issueops"):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "issueops_context", None) or {}
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
        }
        for name in CONTEXT_FIELDS[:3]:
            entry[name] = _field(record, context, name)
        entry["message"] = record.getMessage()
        for name in CONTEXT_FIELDS[3:]:
            entry[name] = _field(record, context, name)
        entry["logger"] = record.name
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


def _field(record: logging.LogRecord, context: dict[str, Any], name: str) -> Any:
    value = record.__dict__.get(name, context.get(name))
    if isinstance(value, str):
        return mask(value)
    return value if value is None or isinstance(value, (int, float, bool)) else mask(str(value))


def configure_logging(level: str = "INFO", *, json_lines: bool = False, service: str = "issueops") -> None:
    """Log to stderr (stdout stays for results); JSON lines when asked, naming `service` (the
    command: issueops-serve, issueops-bridge, ...). Masking is always on."""
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter(service) if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
