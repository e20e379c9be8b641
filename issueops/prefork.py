"""Start the local runner's tasks as forks of one process that has already imported the heavy libraries.

KFP's SubprocessRunner starts a fresh interpreter for every task, and each one pays again for
importing scikit-learn, pandas, matplotlib, MLflow and skl2onnx: one to two seconds a task, most of
a small run's wall time. With prefork the runner still decides what runs, when, with which inputs and
retries; only the process start changes. The task's command (`sh -ec <script> <component source>
--executor_input ... --function_to_execute f`) becomes a fork of a preloaded server that writes the
component source where the script would and calls kfp's own `executor_main`.

The server imports module by module and answers between imports, so the first task does not wait for the
libraries that only the last one needs. It is single-threaded (forking is safe) and ends with the run.
Anything that is not a plain lightweight-component command falls back to KFP's own subprocess start.
ISSUEOPS_LOCAL_TASKS=subprocess turns prefork off.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

EXECUTOR_MODULE = "kfp.dsl.executor_main"
MAX_MESSAGE = 64 * 1024 * 1024
_SIZE = struct.Struct("!Q")

# What the steps import, in the order the pipeline needs it; later stages load while earlier tasks run.
SUPERVISED_STAGES: tuple[tuple[str, ...], ...] = (
    ("kfp.dsl.executor_main", "pandas", "sklearn.model_selection", "sklearn.preprocessing", "issueops.steps",
     "issueops.prepare"),
    ("sklearn.ensemble", "sklearn.linear_model", "issueops.training"),
    ("sklearn.metrics", "matplotlib.pyplot", "issueops.evaluate", "issueops.judge"),
    ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
     "issueops.registry"),
    ("onnx", "onnxruntime", "skl2onnx", "issueops.export", "issueops.packaging", "issueops.history",
     "issueops.notify"),
)  # fmt: skip
EXTRA_STAGES: dict[str, tuple[str, ...]] = {
    "xgboost": ("xgboost", "onnxmltools"),
    "neural_network": ("torch",),
    "autoencoder": ("torch",),
}


def stages_for(algorithm: str, learning_type: str) -> list[tuple[str, ...]]:
    """Preload stages for one spec. RL trains in Ray workers of its own, so only the steps around it gain."""
    stages = list(SUPERVISED_STAGES)
    if learning_type == "reinforcement":
        stages = [stages[0][:1] + ("issueops.steps",), stages[3], stages[4]]
    if algorithm in EXTRA_STAGES:
        stages.insert(1, EXTRA_STAGES[algorithm])
    return stages


# ---------------------------------------------------------------- server (the preloaded process)


def serve(socket_path: str, stages: Sequence[Sequence[str]]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked tasks are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    for module in (module for stage in stages for module in stage):
        _answer_waiting(listener, selector, timeout=0)  # a waiting task forks with what is loaded so far
        with contextlib.suppress(Exception):  # a missing optional library is the task's problem, not ours
            importlib.import_module(module)
    while True:
        _answer_waiting(listener, selector, timeout=None)


def _answer_waiting(listener: socket.socket, selector: selectors.BaseSelector, timeout: float | None) -> None:
    while selector.select(timeout):
        connection, _ = listener.accept()
        try:
            request, fds = _receive(connection)
        except (OSError, EOFError, pickle.UnpicklingError):
            connection.close()
            continue
        if request.get("kind") == "stop":
            os._exit(0)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
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


class PreforkServer:
    """The preloaded process for one pipeline run, reached over a Unix socket in a private directory."""

    def __init__(self, stages: Sequence[Sequence[str]]):
        self._dir = tempfile.mkdtemp(prefix="issueops-prefork-")
        self.socket_path = os.path.join(self._dir, "tasks.sock")
        env = {**os.environ, "_KFP_RUNTIME": "true"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "issueops.prefork",
                self.socket_path,
                json.dumps([list(s) for s in stages]),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # only import-time chatter; each task writes to the runner's stdout
            stderr=subprocess.DEVNULL,
        )

    def _connect(self, deadline_s: float = 30.0) -> socket.socket:
        end = time.monotonic() + deadline_s
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect(self.socket_path)
                return client
            except (FileNotFoundError, ConnectionRefusedError):
                client.close()
                if self.process.poll() is not None or time.monotonic() > end:
                    raise
                time.sleep(0.02)

    def _ask(self, request: dict) -> tuple:
        client = self._connect()
        request |= {
            "cwd": os.getcwd(),
            "env": {**os.environ, **request.pop("env_vars", {}), "_KFP_RUNTIME": "true"},
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
        parts = task_parts(full_command)
        if parts is None:
            return None
        source, args = parts
        try:
            kind, value = self._ask(
                {"kind": "task", "source": source, "args": args, "env_vars": env_vars or {}}
            )
        except OSError:
            return None  # the server did not come up: the runner starts the task itself
        return value if kind == "exit" else 1

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args) in a fork of the preloaded process; its result, or its exception raised here."""
        kind, value = self._ask(
            {"kind": "call", "module": function.__module__, "function": function.__qualname__, "args": args}
        )
        if kind == "ok":
            return value
        if kind == "error":
            raise value
        raise RuntimeError(f"{function.__qualname__} ended without an answer (exit {value}).")

    def close(self) -> None:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(self.socket_path)
            _send(client, {"kind": "stop"})
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            os.rmdir(self._dir)


_active: PreforkServer | None = None


def active_server() -> PreforkServer | None:
    """The preloaded process of the run in progress, if prefork is on."""
    return _active


@contextlib.contextmanager
def prefork_tasks(stages: Sequence[Sequence[str]]) -> Iterator[PreforkServer | None]:
    """While active, KFP's SubprocessRunner starts its tasks as forks of a preloaded server.

    Nested uses share the outer server, so a caller can start it early (its imports then overlap
    the caller's own checks) and the run inside finds it ready.
    """
    global _active
    if _active is not None or os.environ.get("ISSUEOPS_LOCAL_TASKS", "prefork") != "prefork":
        yield _active
        return
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess
    server = PreforkServer(stages)

    def run_local_subprocess(full_command, env_vars=None):
        status = server.run(full_command, env_vars)
        return original(full_command=full_command, env_vars=env_vars) if status is None else status

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    _active = server
    try:
        yield server
    finally:
        _active = None
        subprocess_task_handler.run_local_subprocess = original
        server.close()


if __name__ == "__main__":
    serve(sys.argv[1], json.loads(sys.argv[2]))
