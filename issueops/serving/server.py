"""The local V2 endpoint: KServe's REST and gRPC servers over ONNX Runtime, following `production`.

A reloader asks the registry, every few seconds, which version each model's `production` alias
points at. A new version is fetched from the object store (its packaged Triton repository),
checked (digests, ONNX Runtime load, one sample row) and swapped in without a restart; if any
check fails the version is refused, the previous one keeps serving, and it is tried again later.

Each process logs the inferences it answers to the object store (issueops.monitoring.payloads,
sampled by ISSUEOPS_PAYLOAD_LOG) from a logger of its own, written on its own thread and flushed
when the server stops; GET /metrics counts them with the inference requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from issueops.config import Settings
from issueops.errors import Conflict, InvalidInput, IssueOpsError, NotFound
from issueops.packaging import triton
from issueops.store import ObjectStore, open_store

log = logging.getLogger("issueops.serving")

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_POLL_S = 2.0
RETRY_REFUSED_S = 10.0
MAX_WORKERS = 64
PAYLOAD_LOG_CLOSE_S = 8.0  # within the 10 s a stopping server gives its workers
DEFAULT_MAX_REQUEST_MB = 8  # kserve's own gRPC message limit
MAX_REQUEST_MB = 2047  # gRPC counts message sizes in a signed 32-bit int


def _import_kserve():
    """Import kserve's server modules; kserve.model_server parses sys.argv at import, so hide ours."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server  # noqa: F401
        from kserve.model_repository import ModelRepository
        from kserve.protocol.grpc.server import GRPCServer
        from kserve.protocol.model_repository_extension import ModelRepositoryExtension
        from kserve.protocol.rest.server import RESTServer
    finally:
        sys.argv = saved
    return ModelRepository, GRPCServer, ModelRepositoryExtension, RESTServer


def check_port_free(host: str, port: int, what: str) -> None:
    """Conflict when something already listens on host:port (before any server starts)."""
    if not 0 < port < 65536:
        raise InvalidInput(f"{what} port {port} is not a TCP port (1-65535).")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                reason = "already in use" if exc.errno == errno.EADDRINUSE else "not allowed for this user"
                flag = "--port" if what == "HTTP" else "--grpc-port"
                raise Conflict(
                    f"{what} port {port} on {host} is {reason}; choose another with {flag}."
                ) from None
            raise InvalidInput(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None


class RegistrySource:
    """Which version is in production, per model, from the MLflow registry (cheap to ask often)."""

    def __init__(self, registry):
        self.registry = registry

    def production(self, names: list[str] | None) -> dict[str, int | None]:
        versions = self.registry.production_versions()
        return versions if names is None else {name: versions.get(name) for name in names}


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


@dataclass
class Refusal:
    version: int
    reason: str
    at: float = field(default_factory=time.monotonic)


class Reloader:
    """Keeps each served model on its production version."""

    def __init__(
        self,
        repository,
        source,
        store: ObjectStore,
        cache: Path,
        *,
        names: list[str] | None,
        poll_s: float = DEFAULT_POLL_S,
        threads: int = 1,
        on_change: Callable[[str, int | None, int], None] | None = None,
        payload_log=None,
    ):
        self.repository, self.source, self.store, self.cache = repository, source, store, Path(cache)
        self.names, self.poll_s, self.threads, self.on_change = names, poll_s, threads, on_change
        self.payload_log = payload_log
        self.refused: dict[str, Refusal] = {}
        self.retry_s = float(Settings.from_env().serve_retry_s or RETRY_REFUSED_S)

    def load(self, model: str, version: int):
        """Fetch, verify and load one version (blocking: run it in a worker thread)."""
        from issueops.serving.model import LoadedVersion

        target = self.cache / model / str(version)
        shutil.rmtree(target, ignore_errors=True)
        triton.fetch_model(self.store, model, version, target)
        return LoadedVersion.load(target, model, version, threads=self.threads)

    async def sync(self) -> None:
        """One poll: move every model whose production alias moved (refusals are retried later)."""
        from issueops.serving.served import ServedModel

        loop = asyncio.get_running_loop()
        wanted = await loop.run_in_executor(None, self.source.production, self.names)
        for name, version in wanted.items():
            served = self.repository.get_model(name)
            current = served.current.version if served is not None and served.current else None
            if version is None or version == current:
                continue
            refusal = self.refused.get(name)
            if refusal and refusal.version == version and time.monotonic() - refusal.at < self.retry_s:
                continue
            started = time.monotonic()
            try:
                loaded = await loop.run_in_executor(None, self.load, name, version)
            except IssueOpsError as exc:
                if not refusal or refusal.version != version or refusal.reason != str(exc):
                    keeps = f"version {current} keeps serving" if current else "nothing is served for it yet"
                    log.error(
                        "refused version %s of %s (%s); %s",
                        version,
                        name,
                        exc,
                        keeps,
                        extra={"status": "refused", "duration_ms": _ms_since(started)},
                    )
                self.refused[name] = Refusal(version, str(exc))
                continue
            self.refused.pop(name, None)
            if served is None:
                served = ServedModel(name, self.payload_log)
                self.repository.update(served)
            previous = served.swap(loaded)
            log.warning(
                "serving %s version %s%s",
                name,
                version,
                f" (was {current})" if current else "",
                extra={"status": "serving", "duration_ms": _ms_since(started)},
            )
            if self.on_change:
                self.on_change(name, current, version)
            if previous is not None:
                await previous.batcher.close()

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except IssueOpsError as exc:  # the registry is unreachable: keep serving, ask again
                log.error("could not read the production versions: %s", exc)
            await asyncio.sleep(self.poll_s)


def serve(
    model: str | None = None,
    *,
    port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    host: str = "127.0.0.1",
    workers: int = 1,
    max_request_mb: int = DEFAULT_MAX_REQUEST_MB,
    poll_s: float | None = None,
    settings: Settings | None = None,
    source=None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the production version of `model` (or of every registered model) until SIGINT/SIGTERM.

    With `workers` > 1 the HTTP port is shared by that many processes (forked before any of them
    opens the registry), each with its own copy of the models and its own reloader, as uvicorn's
    and kserve's workers share one socket; gRPC is served by the first. A request larger than
    `max_request_mb` MiB is refused (HTTP 413, gRPC RESOURCE_EXHAUSTED). Raises Conflict for a port
    in use, NotFound when `model` has no production version that can be served, InvalidInput for
    a bad ISSUEOPS_PAYLOAD_LOG, before anything listens.
    """
    settings = settings or Settings.from_env()
    if port == grpc_port:
        raise InvalidInput("The HTTP and gRPC ports must differ.")
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}.")
    if not 1 <= max_request_mb <= MAX_REQUEST_MB:
        raise InvalidInput(f"--max-request-mb must be between 1 and {MAX_REQUEST_MB}, not {max_request_mb}.")
    with _shared_metrics(workers):  # before anything imports prometheus_client
        payload_log_rate = settings.payload_log_rate
        body_timeout_s = _body_timeout_s()
        check_port_free(host, port, "HTTP")
        check_port_free(host, grpc_port, "gRPC")
        endpoint = _Endpoint(
            model,
            settings,
            source,
            poll_s,
            host,
            port,
            grpc_port,
            _listening_socket(host, port) if workers > 1 else None,
            max_request_mb << 20,
            body_timeout_s,
            payload_log_rate,
        )
        parent, children = os.getpid(), []
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                _serve_worker(endpoint, parent)  # never returns into the parent's stack
            children.append(pid)
        try:
            _serve_process(endpoint, ready=ready)
        finally:
            _stop_workers(children)


@dataclass
class _Endpoint:
    model: str | None
    settings: Settings
    source: object
    poll_s: float | None
    host: str
    port: int
    grpc_port: int
    shared_socket: socket.socket | None
    max_request_bytes: int
    body_timeout_s: float
    payload_log_rate: float = 1.0


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's variable (issueops.monitoring.metrics)


@contextlib.contextmanager
def _shared_metrics(workers: int):
    """With several workers, a fresh directory for their metric values (prometheus_client's
    multiprocess mode), so that /metrics, whichever process answers it, adds up all of them;
    removed afterwards. It must be set before prometheus_client is imported and before the fork.
    Left alone when the user set one (theirs to wipe); when prometheus_client is already imported
    each process shows its own counts."""
    if workers == 1 or os.environ.get(METRICS_DIR_ENV):
        yield
        return
    if "prometheus_client" in sys.modules:
        log.warning("with --workers, /metrics shows the counts of the process that answers it")
        yield
        return
    directory = tempfile.mkdtemp(prefix="issueops-serve-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    try:
        yield
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def _serve_worker(endpoint: _Endpoint, parent: int) -> None:
    """One more HTTP process on the shared socket: no gRPC, no ready line, ends with its parent."""
    cache = endpoint.settings.home / "serving-workers" / str(os.getpid())
    try:
        _serve_process(endpoint, worker_of=parent, cache=cache)
    except IssueOpsError as exc:
        log.error("HTTP worker %s stopped: %s", os.getpid(), exc)
    except BaseException:  # noqa: BLE001 - the worker must end here whatever happened
        log.exception("HTTP worker %s stopped", os.getpid())
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        os._exit(0)


def _serve_process(
    endpoint: _Endpoint,
    *,
    worker_of: int | None = None,
    ready: Callable[[str], None] | None = None,
    cache: Path | None = None,
) -> None:
    model, settings, source, poll_s = endpoint.model, endpoint.settings, endpoint.source, endpoint.poll_s
    host, port, grpc_port, shared_socket = (
        endpoint.host,
        endpoint.port,
        endpoint.grpc_port,
        endpoint.shared_socket,
    )
    store = open_store(settings)
    if source is None:
        from issueops.registry.lifecycle import Registry

        source = RegistrySource(Registry.from_settings(settings))
    poll_s = poll_s if poll_s is not None else float(settings.serve_poll_s or DEFAULT_POLL_S)
    ModelRepository, GRPCServer, ModelRepositoryExtension, RESTServer = _import_kserve()
    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.serving import endpoints

    _quiet_kserve()
    repository = ModelRepository()
    # One logger per process (its objects get random names: the workers' never collide).
    payload_log = PayloadLogger(store, sample_rate=endpoint.payload_log_rate)
    reloader = Reloader(
        repository,
        source,
        store,
        cache or settings.home / "serving",
        names=[model] if model else None,
        poll_s=poll_s,
        threads=int(settings.serve_threads),
        payload_log=payload_log,
    )

    async def main() -> None:
        await reloader.sync()
        if model and repository.get_model(model) is None:
            if worker_of:
                return  # the first process says why
            refusal = reloader.refused.get(model)
            raise (
                InvalidInput(refusal.reason)
                if refusal
                else NotFound(f"{model} has no production version to serve.")
            )
        dataplane = endpoints.VersionedDataPlane(repository)
        extension = ModelRepositoryExtension(model_registry=repository)
        rest = endpoints.rest_server(RESTServer, endpoint.max_request_bytes, endpoint.body_timeout_s)(
            "kserve.model_server:app", dataplane, extension, port, grace_period=2
        )
        rest.config.host = host
        rest.config.access_log = False
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(rest.start([shared_socket] if shared_socket else None))]
        grpc = None
        if not worker_of:
            grpc = endpoints.grpc_server(GRPCServer)(
                host,
                grpc_port,
                dataplane,
                extension,
                kwargs=endpoints.grpc_options(endpoint.max_request_bytes),
                grace_period=2,
            )
            tasks.append(asyncio.create_task(grpc.start(4)))
        background = [asyncio.create_task(reloader.run()), asyncio.create_task(_publish(payload_log))]
        if worker_of:
            background.append(asyncio.create_task(_until_orphaned(worker_of, stop)))
        waiter = asyncio.create_task(stop.wait())
        if not worker_of:
            await _until_listening(host, port, grpc_port, tasks)
        served = (
            ", ".join(f"{n} v{m.current.version}" for n, m in repository.get_models().items())
            or "nothing yet"
        )
        if ready:
            ready(f"serving {served} on http://{host}:{port} and grpc {host}:{grpc_port}")
        await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        for task in background:
            task.cancel()
        rest._server.should_exit = True
        if grpc is not None:
            await grpc.stop()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        for name in list(repository.get_models()):
            current = repository.get_model(name).current
            if current:
                await current.batcher.close()

    try:
        _run(main())
    finally:
        payload_log.close(timeout=PAYLOAD_LOG_CLOSE_S)  # what was answered is written before exit


def _body_timeout_s() -> float:
    """How long a request body may take to arrive (ISSUEOPS_SERVE_BODY_TIMEOUT_S), checked before
    anything listens."""
    from issueops.serving.endpoints import BODY_TIMEOUT_S

    value = Settings.from_env().serve_body_timeout_s.strip()
    try:
        seconds = float(value) if value else BODY_TIMEOUT_S
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InvalidInput(
            f"ISSUEOPS_SERVE_BODY_TIMEOUT_S must be a number of seconds above 0, not {value!r}."
        )
    return seconds


def _listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket the workers share (bound once, before they fork)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _publish(payload_log, every_s: float = 1.0) -> None:
    """The payload log's queue depth as a gauge, from this loop: the logger's own thread may be
    the one stalled on the store."""
    while True:
        payload_log.publish_queue_depth()
        await asyncio.sleep(every_s)


async def _until_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker ends with the process that forked it, even when that one was killed."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def _stop_workers(children: list[int], grace_s: float = 10.0) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in children:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    if children and "issueops.monitoring.metrics" in sys.modules:
        from issueops.monitoring.metrics import process_ended

        for pid in children:
            process_ended(pid)


def _run(coroutine) -> None:
    """uvloop when installed (uvicorn's own choice for the same servers), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine)


async def _until_listening(host: str, port: int, grpc_port: int, tasks) -> None:
    """Wait until both servers accept connections (or one of them failed to start)."""
    for _ in range(200):
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done() and t.exception():
                    raise Conflict(f"The server could not start: {t.exception()}")
            raise Conflict(f"The server stopped while starting (is port {port} or {grpc_port} taken?).")
        if await asyncio.to_thread(_accepts, host, port) and await asyncio.to_thread(
            _accepts, host, grpc_port
        ):
            return
        await asyncio.sleep(0.05)


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


class _ClientErrors(logging.Filter):
    """kserve logs a client's bad request with a traceback at ERROR; the client already got a 400/404."""

    CLIENT_ERRORS = ("kserve.errors.InvalidInput", "kserve.errors.ModelNotFound")

    def filter(self, record: logging.LogRecord) -> bool:
        # issueops.logs has already turned exc_info into (masked) exc_text; its last line names the class.
        last = (record.exc_text or "").rstrip().rsplit("\n", 1)[-1]
        return not last.startswith(self.CLIENT_ERRORS)


def _quiet_kserve() -> None:
    """One log line per request costs more than the request; keep warnings and errors only."""
    import warnings

    warnings.filterwarnings("ignore", module="fastapi")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("kserve").addFilter(_ClientErrors())
    if not logging.getLogger("issueops").handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
