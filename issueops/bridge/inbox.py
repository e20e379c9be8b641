"""The bridge's durable inbox: every accepted delivery, de-duplicated, until it has been handled.

A delivery is written here before GitHub gets its answer, keyed by X-GitHub-Delivery, so a
redelivered event starts nothing new and a restart resumes what was queued. The poller keeps its
cursors and ETags in the same SQLite file (ISSUEOPS_HOME/bridge.db).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

QUEUED, DONE, FAILED = "queued", "done", "failed"
KEEP_DELIVERIES = 100_000
WAL_BACKSTOP = 16_384  # pages (64 MiB): a stuck worker does not let the write-ahead log grow without end
WAL_KEEP_BYTES = 16 * 1024 * 1024  # what the log file is cut back to once it restarts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    payload BLOB,
    note TEXT,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, received_at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Delivery:
    id: str
    event: str
    payload: dict[str, Any]


class Inbox:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        # Seconds since the epoch: when a delivery arrived and when one told to wait is due.
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
        # A checkpoint inside a commit (copying the WAL back, with its fsync) took milliseconds out
        # of the webhook's answer every few hundred deliveries: the worker checkpoints instead
        # (`checkpoint`), and a commit does only when the worker has not for WAL_BACKSTOP pages.
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self.wake = threading.Event()

    @classmethod
    def for_home(cls, home: Path) -> Inbox:
        return cls(Path(home) / "bridge.db")

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log back into the database, on a connection of its own (without
        the lock the receiver takes, so an accept never waits for it); the worker calls it."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def accept(self, delivery_id: str, event: str, payload: bytes) -> bool:
        """Queue a delivery; False when this delivery id was seen before (nothing is queued)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (id, event, received_at, state, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                (delivery_id, event, self.clock(), QUEUED, payload),
            )
            accepted = cursor.rowcount == 1
        if accepted:
            self.wake.set()
        return accepted

    def seen(self, delivery_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return row is not None

    def queued(self, limit: int = 100, decode: Callable[[bytes], Any] = json.loads) -> list[Delivery]:
        """Deliveries still to handle, oldest first, skipping those told to wait. One whose payload
        `decode` cannot make a JSON object of is marked failed, with one log line."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, event, payload FROM deliveries WHERE state = ? AND not_before <= ? "
                "ORDER BY received_at, rowid LIMIT ?",
                (QUEUED, self.clock(), limit),
            ).fetchall()
        out = []
        for ident, event, payload in rows:
            try:
                data = decode(payload)
            except RecursionError:  # json's decoder recurses once per level
                data = "it nests too deeply"
            except (TypeError, ValueError) as error:
                data = str(error)[:200]
            if not isinstance(data, dict):
                reason = data if isinstance(data, str) else f"a JSON {type(data).__name__}"
                log.warning("delivery %s dropped: the payload is not a JSON object (%s)", ident, reason)
                self.finish(ident, FAILED, f"the payload is not a JSON object ({reason})")
                continue
            out.append(Delivery(ident, event, data))
        return out

    def take(self, delivery_id: str, lease: float = 300.0) -> bool:
        """Claim a queued delivery for this process; False when another one took it first.

        `bridge serve` and a `bridge poll --once` from cron may share one home: each delivery is
        handled by one of them. A taker that dies leaves it queued; it is taken again after `lease`.
        """
        now = self.clock()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE deliveries SET not_before = ? WHERE id = ? AND state = ? AND not_before <= ?",
                (now + lease, delivery_id, QUEUED, now),
            )
        return cursor.rowcount == 1

    def claim(self, key: str, delivery_id: str) -> bool:
        """Mark one GitHub event (`key`: a comment, say) as handled by `delivery_id`; False when
        another delivery (the same event brought by the other route) already claimed it."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)", (key, delivery_id))
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == delivery_id

    def retry_later(self, delivery_id: str, seconds: float, note: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET not_before = ?, note = ? WHERE id = ?",
                (self.clock() + seconds, note, delivery_id),
            )

    def finish(self, delivery_id: str, state: str = DONE, note: str = "") -> None:
        """Mark handled; the payload is dropped, the id is kept for de-duplication."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ?, note = ?, payload = NULL WHERE id = ?",
                (state, note[:500], delivery_id),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        return dict(rows)

    def note(self, delivery_id: str) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, note FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return (row[0], row[1] or "") if row else None

    def prune(self, keep: int = KEEP_DELIVERIES) -> None:
        """Forget the oldest handled delivery ids beyond `keep` (GitHub redelivers for days, not years)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM deliveries WHERE state != ? AND rowid NOT IN "
                "(SELECT rowid FROM deliveries ORDER BY received_at DESC LIMIT ?)",
                (QUEUED, keep),
            )

    # ------------------------------------------------------------------ small persistent values

    def get(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
