"""The local embedded store of training requests: JSON files under ISSUEOPS_HOME/requests, replaced
atomically on every save (on a cluster the TrainingRequest resources take its place, issueops.bridge.kube).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from issueops.errors import InvalidInput, NotFound
from issueops.lifecycle.state_machine import TrainingRequest, iso, request_name, utcnow

# ---------------------------------------------------------------------- the embedded store


class RequestStore:
    """Requests as JSON files under ISSUEOPS_HOME/requests, replaced atomically on every save."""

    def __init__(self, home: Path):
        self.root = Path(home) / "requests"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    def _path(self, name: str) -> Path:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,252}", name):
            raise InvalidInput(f"'{name[:80]}' is not a valid request name.")
        return self.root / f"{name}.json"

    def save(self, request: TrainingRequest) -> TrainingRequest:
        request.updated_at = iso(utcnow())
        data = json.dumps(request.to_dict(), indent=2, sort_keys=True, default=str).encode()
        path = self._path(request.name)
        with self._lock:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{request.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return request

    def load(self, name: str) -> TrainingRequest:
        path = self._path(name)
        try:
            return TrainingRequest.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise NotFound(f"There is no request named {name}.") from None

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def all(self) -> list[TrainingRequest]:
        """Every request, oldest first (the order runs are started in)."""
        found = []
        for path in self.root.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                found.append(self._read(path))
        return sorted(found, key=lambda r: (r.created_at, r.name))

    def _read(self, path: Path) -> TrainingRequest:
        """A request file, read again only when it changed (the worker lists them every tick)."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(path.name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, path.read_text())
            self._cache[path.name] = cached
        return TrainingRequest.from_dict(json.loads(cached[1]))

    def active(self) -> list[TrainingRequest]:
        return [r for r in self.all() if r.active]

    def for_issue(self, repository: str | None, issue: int) -> TrainingRequest | None:
        """The latest request of an issue, or None (found by name: no scan of the store)."""
        latest, generation = None, 1
        while self.exists(request_name(repository, issue, generation)):
            latest = request_name(repository, issue, generation)
            generation += 1
        return self.load(latest) if latest else None

    def next_name(self, repository: str | None, issue: int) -> str:
        generation = 1
        while self.exists(request_name(repository, issue, generation)):
            generation += 1
        return request_name(repository, issue, generation)

    @contextlib.contextmanager
    def editing(self, name: str) -> Iterator[TrainingRequest]:
        """Load, let the caller change, save; nothing is saved when the block raises."""
        with self._lock:
            request = self.load(name)
            yield request
            self.save(request)
