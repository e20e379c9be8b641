"""Logging with every known secret masked, on any handler, in any format."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading

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


_base_factory = logging.getLogRecordFactory()


def _masked_record(*args, **kwargs) -> logging.LogRecord:
    # Masking at record creation covers every handler, including ones added later (pytest's).
    record = _base_factory(*args, **kwargs)
    record.msg = mask(record.getMessage())
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    return record


logging.setLogRecordFactory(_masked_record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Log to stderr (stdout stays for results); JSON lines when asked. Masking is always on."""
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
