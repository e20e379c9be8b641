"""One writer at a time per registered model: the lock the registry holds while it changes a model.

MLflow has no transactions, so approving, promoting, archiving, rejecting and rolling back read
the model's state and then write several tags and an alias. Two writers interleaving those steps
leave two versions Approved or an audit record naming the wrong previous version. Every such
sequence runs under `RegistryLock.hold(model)`, chosen by `ISSUEOPS_REGISTRY_LOCK`:

- `file`: an exclusive `flock` on a file per model, next to a SQLite registry (else under
  `$ISSUEOPS_HOME/locks`). It serialises every process on one machine, and the kernel releases it
  when its holder dies, so a `kill -9` never leaves a model locked.
- `lease`: a Kubernetes Lease (coordination.k8s.io/v1) per model in `ISSUEOPS_NAMESPACE`, for pods
  that share an MLflow server. The holder renews it while it works; one that dies stops renewing
  and the next writer takes the lease over once `leaseDurationSeconds` have passed without change.
- `auto` (default): `file` for a SQLite registry or outside a cluster, `lease` in a pod.

Waiting is bounded (`ISSUEOPS_REGISTRY_LOCK_WAIT`, default 120 s): a writer that cannot get the
lock in time gives up with a sentence and changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput

log = logging.getLogger(__name__)

LOCKS = ("auto", "file", "lease")
LEASE_DURATION_S = 30
LEASE_PREFIX = "issueops-model-"
POLL_S = 0.05


class RegistryLock(Protocol):
    """Mutual exclusion of the changes to one registered model, across processes (and pods)."""

    def hold(self, model: str) -> contextlib.AbstractContextManager[None]: ...


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    return Path(unquote(tracking_uri[len("sqlite:///") :])).resolve()


def lock_directory(tracking_uri: str, settings: Settings | None = None) -> Path:
    """Where the lock files of a registry live: next to its SQLite file, else in ISSUEOPS_HOME."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        return database.parent / f"{database.name}.locks"
    return (settings or Settings.from_env()).home / "locks"


def registry_lock(tracking_uri: str, settings: Settings | None = None) -> RegistryLock:
    """The lock the settings ask for (see the module's docstring)."""
    settings = settings or Settings.from_env()
    kind = settings.registry_lock
    if kind not in LOCKS:
        raise InvalidInput(f"ISSUEOPS_REGISTRY_LOCK must be auto, file or lease, not {kind[:40]!r}.")
    if kind == "auto":
        kind = "lease" if settings.in_cluster and sqlite_path(tracking_uri) is None else "file"
    if kind == "lease":
        return LeaseLock(settings.namespace, wait_s=settings.registry_lock_wait_s)
    return FileLock(lock_directory(tracking_uri, settings), wait_s=settings.registry_lock_wait_s)


def _busy(model: str, wait_s: float, holder: str | None = None) -> ExternalServiceError:
    by = f" (held by {holder})" if holder else ""
    return ExternalServiceError(
        f"Another change to model {model} is still in progress{by} after {wait_s:g} s; nothing was changed, "
        "try again.",
        transient=True,
    )


class FileLock:
    """An exclusive flock on `<directory>/<name>.lock`."""

    def __init__(self, directory: Path, *, wait_s: float = 120.0):
        self.directory, self.wait_s = Path(directory), wait_s

    @contextlib.contextmanager
    def hold(self, model: str, *, name: str | None = None) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{name or 'model-' + model}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise _busy(model, self.wait_s)
                time.sleep(POLL_S * (0.5 + random.random()))
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def lease_name(model: str) -> str:
    """A valid Lease name (DNS subdomain) for a model name, distinct for names that differ in case."""
    slug = re.sub(r"[^a-z0-9-]", "-", model.lower())[:200]
    return f"{LEASE_PREFIX}{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def _micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 with exactly six fractional digits."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """A coordination.k8s.io/v1 Lease per model, taken with optimistic concurrency (resourceVersion).

    A lease is free when it has no holder, or when its record has not changed for its
    leaseDurationSeconds as this process sees it (measured on this process's clock, like client-go's
    leader election, so the pods' clocks need not agree).
    """

    def __init__(
        self,
        namespace: str,
        *,
        wait_s: float = 120.0,
        duration_s: int = LEASE_DURATION_S,
        api=None,
        identity: str | None = None,
    ):
        self.namespace, self.wait_s, self.duration_s = namespace, wait_s, duration_s
        self._api = api
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"

    def api(self):
        if self._api is None:
            from kubernetes import client

            from issueops.custom_resources import api_client

            self._api = client.CoordinationV1Api(api_client("ISSUEOPS_REGISTRY_LOCK=lease"))
        return self._api

    @contextlib.contextmanager
    def hold(self, model: str) -> Iterator[None]:
        name = lease_name(model)
        held = _HeldLease(self, name, self._acquire(model, name))
        held.start()
        try:
            yield
        finally:
            held.release()

    def _body(self, name: str, transitions: int, resource_version: str | None = None) -> dict:
        now = _micro_time()
        metadata = {
            "name": name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/part-of": "issueops"},
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration_s,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def _acquire(self, model: str, name: str) -> str:
        """Take the lease; its resourceVersion once held."""
        from kubernetes.client.exceptions import ApiException

        api = self.api()
        deadline = time.monotonic() + self.wait_s
        seen: tuple[str, float] | None = None  # (resourceVersion, when this process first saw it)
        holder = None
        while True:
            try:
                try:
                    lease = api.read_namespaced_lease(name, self.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    created = api.create_namespaced_lease(self.namespace, self._body(name, 0))
                    return created.metadata.resource_version
                version, spec = lease.metadata.resource_version, lease.spec
                holder = spec.holder_identity if spec else None
                if seen is None or seen[0] != version:
                    seen = (version, time.monotonic())
                duration = (spec.lease_duration_seconds if spec else None) or self.duration_s
                if not holder or holder == self.identity or time.monotonic() - seen[1] > duration:
                    transitions = (spec.lease_transitions or 0) if spec else 0
                    if holder and holder != self.identity:
                        log.warning("taking over the registry lease %s from %s (expired)", name, holder)
                    body = self._body(name, transitions + (holder != self.identity), version)
                    return api.replace_namespaced_lease(name, self.namespace, body).metadata.resource_version
            except ApiException as exc:
                if exc.status != 409:  # 409: another writer created or changed it first
                    raise _lease_error(exc, name, self.namespace) from None
            except OSError as exc:  # urllib3's connection errors
                raise ExternalServiceError(
                    f"Could not reach the Kubernetes API for the registry lease {name}: {exc}", transient=True
                ) from None
            if time.monotonic() >= deadline:
                raise _busy(model, self.wait_s, holder)
            time.sleep(min(0.2, self.duration_s / 10) * (0.5 + random.random()))


def _lease_error(exc, name: str, namespace: str) -> ExternalServiceError:
    if exc.status in (401, 403):
        return ExternalServiceError(
            f"The Kubernetes API refused the registry lease {name} in namespace {namespace} ({exc.status}): "
            "grant get, create and update on leases (manifests/rbac/registry-lease.yaml).",
        )
    return ExternalServiceError(
        f"The Kubernetes API answered {exc.status} for the registry lease {name}: {exc.reason}.",
        transient=exc.status is None or exc.status >= 500,
    )


class _HeldLease(threading.Thread):
    """Renews a held lease every third of its duration until released; releasing clears the holder."""

    def __init__(self, lock: LeaseLock, name: str, resource_version: str):
        super().__init__(daemon=True, name=f"lease-{name}")
        self.lock, self.name_, self.version = lock, name, resource_version
        self.transitions: int | None = None
        self._done = threading.Event()
        self._mutex = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(self.lock.duration_s / 3):
            with self._mutex:
                if self._done.is_set():
                    return
                self._write(self.lock.identity)

    def _write(self, holder: str | None) -> bool:
        from kubernetes.client.exceptions import ApiException

        api, lock = self.lock.api(), self.lock
        try:
            lease = api.read_namespaced_lease(self.name_, lock.namespace)
            if lease.spec is None or lease.spec.holder_identity != lock.identity:
                log.warning("the registry lease %s was taken over by another writer", self.name_)
                return False
            body = lock._body(self.name_, lease.spec.lease_transitions or 0, lease.metadata.resource_version)
            body["spec"]["acquireTime"] = (
                _micro_time(lease.spec.acquire_time) if lease.spec.acquire_time else None
            )
            if holder is None:
                body["spec"].update(holderIdentity=None, leaseDurationSeconds=1)
            self.version = api.replace_namespaced_lease(
                self.name_, lock.namespace, body
            ).metadata.resource_version
            return True
        except (ApiException, OSError) as exc:
            log.warning(
                "could not %s the registry lease %s: %s", "renew" if holder else "release", self.name_, exc
            )
            return False

    def release(self) -> None:
        with self._mutex:
            self._done.set()
            self._write(None)
        if self.is_alive():
            self.join()
