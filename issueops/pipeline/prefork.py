"""Start the local runner's tasks as forks of one process that has already imported the heavy libraries.

KFP's SubprocessRunner starts a fresh interpreter for every task, and each one pays again for
importing scikit-learn, pandas, matplotlib, MLflow and skl2onnx: one to two seconds a task, most of
a small run's wall time. With prefork the runner still decides what runs, when, with which inputs and
retries; only the process start changes. The task's command (`sh -ec <script> <component source>
--executor_input ... --function_to_execute f`) becomes a fork of a preloaded server that writes the
component source where the script would and calls kfp's own `executor_main`.

The server imports module by module and answers between imports, so the first task does not wait
for the libraries that only the last one needs; after the shared modules it forks a second lane
for the publishing steps, so the two sets load on two cores. Each server is single-threaded
(forking is safe) and ends with the run, or when the process that started it is gone.
Anything that is not a plain lightweight-component command falls back to KFP's own subprocess start.
ISSUEOPS_LOCAL_TASKS=subprocess turns prefork off.

A task dies with its run. The server leads a process group of its own that holds every task, forked
or started as a subprocess, and whatever the tasks start; when the run's process dies (even by
`kill -9`) the kernel tells the server (PR_SET_PDEATHSIG) and the server kills the whole group, so
no task of a dead run goes on to finish and mark itself done. With ISSUEOPS_LOCAL_TASKS=subprocess
the same server runs as a guard that preloads nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import pickle
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from issueops.config import Settings

EXECUTOR_MODULE = "kfp.dsl.executor_main"
MAX_MESSAGE = 64 * 1024 * 1024
_SIZE = struct.Struct("!Q")

# judge reads the registry (production, to score it on the same data): it forks where MLflow is loaded.
PUBLISH_STEPS = frozenset(
    {"judge", "register", "package", "promote", "deploy", "write_history", "notify", "rollback"}
)


@dataclass(frozen=True)
class Preload:
    """What the server imports: `shared` first, then each lane in a process of its own forked from it.

    Lanes load on separate cores: the steps that publish a model (MLflow, skl2onnx) need not wait
    behind the imports of the steps that train it (estimators, matplotlib), nor the other way round.
    """

    shared: tuple[str, ...]
    data: tuple[str, ...]
    publish: tuple[str, ...]

    def lanes(self) -> dict[str, tuple[str, ...]]:
        return {"data": self.data, "publish": self.publish}


_REGISTRY = (
    "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "issueops.registry.lifecycle",
)  # fmt: skip
_PACKAGING = (
    "onnx",
    "onnxruntime",
    "issueops.packaging.onnx",
    "issueops.packaging.package",
    "issueops.reporting.history",
    "issueops.reporting.notify.dispatch",
    "issueops.reporting.notify.channels",
)
_EXTRA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # algorithm: (data lane, publish lane)
    "xgboost": (("xgboost",), ("xgboost", "onnxmltools")),
    "neural_network": (("torch",), ("torch",)),
    "autoencoder": (("torch",), ("torch",)),
}


def preload_for(algorithm: str, learning_type: str) -> Preload:
    """The imports one spec's steps need. RL trains in Ray workers of its own: only the steps around it gain."""
    if learning_type == "reinforcement":
        return Preload(
            shared=(EXECUTOR_MODULE, "pandas", "issueops.pipeline.steps"),
            data=(
                "gymnasium",
                "onnxruntime",
                "matplotlib.pyplot",
                "issueops.evaluation.supervised",
                "issueops.evaluation.judge",
            ),
            publish=_REGISTRY + _PACKAGING,
        )
    data_extra, publish_extra = _EXTRA.get(algorithm, ((), ()))
    return Preload(
        shared=(EXECUTOR_MODULE, "pandas", "issueops.pipeline.steps"),
        data=(*data_extra, "sklearn.model_selection", "sklearn.preprocessing", "issueops.data.prepare", "sklearn.ensemble",
              "sklearn.linear_model", "sklearn.cluster", "issueops.training.train", "sklearn.metrics", "matplotlib.pyplot",
              "issueops.evaluation.supervised", "issueops.evaluation.judge"),
        publish=(*_REGISTRY, *publish_extra, "skl2onnx", *_PACKAGING),
    )  # fmt: skip


# ---------------------------------------------------------------- server (the preloaded process)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int, parent: int) -> None:
    """Have the kernel send `signum` to this process when `parent` (its parent) exits; if the parent
    is already gone, act on it now. Linux only: elsewhere the server's polling of its parent remains."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def _end_run_group(signum=None, frame=None) -> None:  # noqa: ARG001 - signal handler signature
    """Kill the server's process group: both lanes, every task and all they started."""
    os.killpg(0, signal.SIGKILL)
    os._exit(0)  # not reached


def serve(directory: str, preload: Preload, owner: int) -> None:
    """Load `shared`, fork the publish lane, load the data lane here; answer requests all along."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked tasks are reaped by the kernel
    signal.signal(signal.SIGTERM, _end_run_group)
    die_with_parent(signal.SIGTERM, owner)
    lane = _Lane(directory, "data", owner)
    lane.load(preload.shared)
    data_lane = os.getpid()
    if os.fork() == 0:
        lane.listener.close()
        die_with_parent(signal.SIGTERM, data_lane)
        lane = _Lane(directory, "publish", data_lane)
    lane.load(preload.lanes()[lane.name])
    while True:
        lane.answer(timeout=1.0)
        if os.getppid() != lane.owner:  # whoever started us is gone: so is the run
            _end_run_group()


class _Lane:
    def __init__(self, directory: str, name: str, owner: int):
        self.name, self.owner = name, owner
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.path.join(directory, f"{name}.sock"))
        self.listener.listen(16)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)

    def load(self, modules: Sequence[str]) -> None:
        for module in modules:
            self.answer(timeout=0)  # a waiting task forks with what is loaded so far
            with contextlib.suppress(Exception):  # a missing optional library is the task's problem
                importlib.import_module(module)

    def answer(self, timeout: float | None) -> None:
        while self.selector.select(timeout):
            connection, _ = self.listener.accept()
            try:
                request, fds = _receive(connection)
            except (OSError, EOFError, pickle.UnpicklingError):
                connection.close()
                continue
            if request.get("kind") == "stop":
                os._exit(0)
            sys.stdout.flush()
            sys.stderr.flush()
            lane = os.getpid()
            if os.fork() == 0:
                self.listener.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a task's SIGTERM ends the task alone
                die_with_parent(signal.SIGKILL, lane)
                _child(connection, request, fds)
            connection.close()
            for fd in fds:
                os.close(fd)
            timeout = 0


def _send(connection: socket.socket, value: object, fds: Sequence[int] = ()) -> None:
    payload = pickle.dumps(value)
    socket.send_fds(connection, [_SIZE.pack(len(payload))], list(fds))
    connection.sendall(payload)


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, _SIZE.size, 1)
    if len(header) < _SIZE.size:
        raise EOFError("the other side closed the connection")
    size = _SIZE.unpack(header)[0]
    if size > MAX_MESSAGE:
        raise EOFError("message too large")
    payload = bytearray()
    while len(payload) < size:
        chunk = connection.recv(min(size - len(payload), 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the connection")
        payload += chunk
    return pickle.loads(payload), fds


def _child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: do what the request asks in the caller's environment, answer, exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    answer: tuple = ("exit", 1)
    try:
        for fd in (1, 2):
            os.dup2(fds[0], fd)
        os.chdir(request["cwd"])
        # A fork takes on the environment of the task it runs (the caller's, as a fresh process
        # would): the environment handed to a child process, not a setting read or changed.
        os.environ.clear()
        os.environ.update(request["env"])
        if request["kind"] == "call":
            try:
                function = getattr(importlib.import_module(request["module"]), request["function"])
                answer = ("ok", function(*request["args"]))
            except Exception as error:
                answer = ("error", error)
        else:
            answer = ("exit", _run_executor(request["source"], request["args"]))
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            _send(connection, answer)
        except Exception:  # an answer that does not pickle still ends the call, with what it was
            with contextlib.suppress(Exception):
                _send(connection, ("error", RuntimeError(repr(answer[1])[:2000])))
        os._exit(0)


def _run_executor(source: str, args: list[str]) -> int:
    """What the component's `sh -ec` script does: write the source to a file, run kfp's executor on it."""
    with tempfile.TemporaryDirectory() as module_dir:
        module_path = Path(module_dir) / "ephemeral_component.py"
        module_path.write_text(source)
        sys.argv = [EXECUTOR_MODULE, "--component_module_path", str(module_path), *args]
        from kfp.dsl import executor_main

        try:
            executor_main.executor_main()
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:
            traceback.print_exc()
            return 1
    return 0


# ---------------------------------------------------------------- client (inside the KFP runner)


def task_parts(full_command: Sequence[str]) -> tuple[str, list[str]] | None:
    """(component source, executor arguments) of a plain lightweight-component command, else None."""
    if len(full_command) < 4 or list(full_command[:2]) != ["sh", "-ec"]:
        return None
    script = full_command[2]
    if EXECUTOR_MODULE not in script or "ephemeral_component.py" not in script or "pip install" in script:
        return None
    return full_command[3], list(full_command[4:])


class ServerGone(ConnectionRefusedError):
    """The preloaded process does not answer (it ended or never came up); never a task's own error."""


class PreforkServer:
    """The preloaded processes of one pipeline run, reached over Unix sockets in a private directory."""

    def __init__(self, preload: Preload, *, forks_tasks: bool = True, env: Mapping[str, str] | None = None):
        self.forks_tasks = forks_tasks
        self.env = dict(env or {})  # the run's settings for its tasks, over this process's environment
        self._dir = tempfile.mkdtemp(prefix="issueops-prefork-")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "issueops.pipeline.prefork",
                self._dir,
                json.dumps(asdict(preload)),
                str(os.getpid()),
            ],
            env={**os.environ, **self.env, "_KFP_RUNTIME": "true"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # only import-time chatter; each task writes to the runner's stdout
            stderr=subprocess.DEVNULL,
            process_group=0,  # the run's group: every task joins it, and it ends as one
        )

    def _connect(self, lane: str, deadline_s: float = 30.0) -> socket.socket:
        """The lane's server; the data lane (which forks with what it has) until that one is up."""
        end = time.monotonic() + deadline_s
        while True:
            for name in dict.fromkeys((lane, "data")):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    client.connect(os.path.join(self._dir, f"{name}.sock"))
                    return client
                except (FileNotFoundError, ConnectionRefusedError):
                    client.close()
            if self.process.poll() is not None or time.monotonic() > end:
                raise ServerGone(f"no preloaded process answers in {self._dir}")
            time.sleep(0.02)

    def _ask(self, request: dict, lane: str = "data") -> tuple:
        client = self._connect(lane)
        request |= {
            "cwd": os.getcwd(),
            "env": {**os.environ, **self.env, **request.pop("env_vars", {}), "_KFP_RUNTIME": "true"},
        }
        sys.stdout.flush()
        sys.stderr.flush()
        with client:
            _send(client, request, [sys.stdout.fileno()])
            try:
                return _receive(client)[0]
            except (EOFError, OSError):
                return ("exit", 1)  # the child died without a word (killed, or crashed in native code)

    def run(self, full_command: Sequence[str], env_vars: dict[str, str] | None) -> int | None:
        """Run one task; its exit status, or None where this command is not ours to start."""
        parts = task_parts(full_command) if self.forks_tasks else None
        if parts is None:
            return None
        source, args = parts
        function = (
            args[args.index("--function_to_execute") + 1] if "--function_to_execute" in args[:-1] else ""
        )
        try:
            kind, value = self._ask(
                {"kind": "task", "source": source, "args": args, "env_vars": env_vars or {}},
                lane="publish" if function in PUBLISH_STEPS else "data",
            )
        except OSError:
            return None  # the server did not come up: the runner starts the task itself
        return value if kind == "exit" else 1

    def call(self, function: Callable[..., Any], *args: Any, lane: str = "data") -> Any:
        """function(*args) in a fork of the preloaded process; its result, or its exception raised here."""
        kind, value = self._ask(
            {"kind": "call", "module": function.__module__, "function": function.__qualname__, "args": args},
            lane=lane,
        )
        if kind == "ok":
            return value
        if kind == "error":
            raise value
        raise RuntimeError(f"{function.__qualname__} ended without an answer (exit {value}).")

    def run_subprocess(self, full_command: Sequence[str], env_vars: dict[str, str] | None) -> int:
        """kfp's own subprocess start (subprocess_task_handler.run_local_subprocess), in the run's group."""
        env = {**os.environ, **self.env, **env_vars} if env_vars or self.env else None
        try:
            process = subprocess.Popen(
                full_command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env=env,
                process_group=self.process.pid,
            )
        except (OSError, subprocess.SubprocessError):  # the group is gone (the server died): start plainly
            process = subprocess.Popen(
                full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
            )
        with process:
            for line in iter(process.stdout.readline, ""):
                print(line, end="")
            print("\n")
            return process.wait()

    def close(self) -> None:
        for lane in ("publish", "data"):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(os.path.join(self._dir, f"{lane}.sock"))
                _send(client, {"kind": "stop"})
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(
            OSError
        ):  # tasks still running (the run was interrupted), and their children
            os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)


_active: PreforkServer | None = None
_guarding = False  # a run's tasks are in a group that ends with it (prefork or not)


def active_server() -> PreforkServer | None:
    """The preloaded process of the run in progress, if prefork is on."""
    return _active


@contextlib.contextmanager
def prefork_tasks(preload: Preload, env: Mapping[str, str] | None = None) -> Iterator[PreforkServer | None]:
    """While active, KFP's SubprocessRunner starts its tasks as forks of a preloaded server.

    Nested uses share the outer server, so a caller can start it early (its imports then overlap
    the caller's own checks) and the run inside finds it ready. env: variables every task gets on
    top of this process's environment (the outer use's, when nested).
    """
    global _active, _guarding
    if _active is not None or _guarding:
        yield _active
        return
    forks = Settings.from_env().local_tasks == "prefork"
    # First: it loads while this process imports kfp. Without prefork it only guards the tasks.
    server = PreforkServer(preload if forks else Preload((), (), ()), forks_tasks=forks, env=env)
    try:
        from kfp.local import subprocess_task_handler
    except BaseException:
        server.close()
        raise
    original = subprocess_task_handler.run_local_subprocess

    def run_local_subprocess(full_command, env_vars=None):
        status = server.run(full_command, env_vars)
        return server.run_subprocess(full_command, env_vars) if status is None else status

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    _active, _guarding = (server if forks else None), True
    try:
        yield _active
    finally:
        _active, _guarding = None, False
        subprocess_task_handler.run_local_subprocess = original
        server.close()


if __name__ == "__main__":
    serve(sys.argv[1], Preload(**{k: tuple(v) for k, v in json.loads(sys.argv[2]).items()}), int(sys.argv[3]))
