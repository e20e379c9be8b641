"""Where an attempt's pipeline runs: a local subprocess (embedded, `--local`) or Kubeflow Pipelines.

Both are keyed by the attempt's run id, chosen and recorded before submission: submitting the
same run id twice finds the first run instead of starting another, so a restarted bridge or
operator never trains an attempt twice. Whatever the backend, the steps report to the object
store (runs/<run_id>/), which is where the driver reads progress and the decision from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from issueops.config import Settings, child_settings
from issueops.errors import ExternalServiceError
from issueops.spec.body import TrainingSpec

log = logging.getLogger(__name__)

RUNNING = "running"
FINISHED = "finished"
LOST = "lost"  # neither running nor finished: killed, or the machine restarted under it


class RunBackend(Protocol):
    def submit(
        self,
        run_id: str,
        spec: TrainingSpec,
        *,
        attempt: int,
        issue: int | None,
        repository: str | None,
    ) -> str:
        """Start the attempt (or find it already started); returns a handle to follow it by."""
        ...

    def state(self, run_id: str, handle: str) -> str:
        """RUNNING, FINISHED or LOST."""
        ...

    def cancel(self, run_id: str, handle: str | None) -> None: ...


class LocalRunBackend:
    """Each attempt is `python -m issueops.bridge.attempt` in its own session under ISSUEOPS_HOME.

    A separate process keeps the KFP local runner's output redirection and globals away from
    the bridge, lets several attempts run at once, survives a bridge restart (it is picked up
    again by its pid), and is cancelled by signalling its process group.
    """

    def __init__(self, settings: Settings, *, env: dict[str, str] | None = None):
        self.settings = settings
        self.root = settings.home / "attempts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self._children: dict[str, subprocess.Popen] = {}

    def _file(self, run_id: str, suffix: str) -> Path:
        return self.root / f"{run_id}{suffix}"

    def submit(self, run_id, spec, *, attempt, issue, repository) -> str:
        pid = self._pid(run_id)
        if pid is not None and self._alive(pid, run_id):
            return f"pid:{pid}"
        if self._file(run_id, ".exit").exists():
            return f"pid:{pid or 0}"
        spec_file = self._file(run_id, ".spec.json")
        spec_file.write_text(spec.to_json())
        command = [
            sys.executable,
            "-m",
            "issueops.bridge.attempt",
            "--run-id",
            run_id,
            "--attempt",
            str(attempt),
            "--spec-file",
            str(spec_file),
        ]
        if issue is not None:
            command += ["--issue", str(issue)]
        if repository:
            command += ["--repository", repository]
        # The attempt is a child process: it gets this environment, with the run's home and repository.
        env = {**os.environ, **self.env, **child_settings(self.settings)}
        if repository:
            env["GITHUB_REPOSITORY"] = repository
        log_path = self.settings.home / "logs" / f"{run_id}.attempt.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(Path.cwd()),
                start_new_session=True,  # its own process group: cancel reaches the whole tree
            )
        self._children[run_id] = child
        self._file(run_id, ".pid").write_text(str(child.pid))
        log.info("attempt %s started as pid %d (log %s)", run_id, child.pid, log_path)
        return f"pid:{child.pid}"

    def state(self, run_id: str, handle: str) -> str:
        child = self._children.get(run_id)
        if child is not None and child.poll() is None:
            return RUNNING
        if child is not None:
            self._children.pop(run_id, None)
        if self._file(run_id, ".exit").exists():
            return FINISHED
        pid = self._pid(run_id)
        if pid is not None and self._alive(pid, run_id):
            return RUNNING
        return LOST

    def cancel(self, run_id: str, handle: str | None) -> None:
        pid = self._pid(run_id)
        if pid is None or not self._alive(pid, run_id):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        child = self._children.pop(run_id, None)
        if child is not None:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                child.wait(timeout=10)

    def _pid(self, run_id: str) -> int | None:
        try:
            return int(self._file(run_id, ".pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int, run_id: str) -> bool:
        """Is `pid` still our attempt? (A recycled pid runs something else.)"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie has finished
            return False
        return run_id.encode() in cmdline


class KfpRunBackend:
    """Each attempt is a run of the training pipeline on a Kubeflow Pipelines endpoint."""

    FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"})

    def __init__(self, host: str, *, experiment: str = "issueops", namespace: str | None = None):
        self.host, self.experiment, self.namespace = host, experiment, namespace
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import kfp

            self._client = kfp.Client(host=self.host, namespace=self.namespace)
        return self._client

    def _find(self, run_id: str) -> str | None:
        predicate = {"key": "display_name", "operation": "EQUALS", "string_value": run_id}
        runs = self.client.list_runs(
            page_size=5, filter=json.dumps({"predicates": [predicate]}), namespace=self.namespace
        ).runs
        return runs[0].run_id if runs else None

    def submit(self, run_id, spec, *, attempt, issue, repository) -> str:
        from issueops.pipeline.graph import training_pipeline

        try:
            found = self._find(run_id)
            if found:
                return f"kfp:{found}"
            run = self.client.create_run_from_pipeline_func(
                training_pipeline,
                arguments={"spec_json": spec.to_json(), "run_id": run_id, "attempt": attempt},
                run_name=run_id,
                experiment_name=self.experiment,
                namespace=self.namespace,
                enable_caching=False,
            )
        except Exception as exc:  # kfp_server_api, urllib3, connection errors
            raise ExternalServiceError(
                f"Kubeflow Pipelines at {self.host} did not take run {run_id}: {exc}", transient=True
            ) from exc
        return f"kfp:{run.run_id}"

    def state(self, run_id: str, handle: str) -> str:
        try:
            state = str(self.client.get_run(handle.removeprefix("kfp:")).state or "").upper()
        except Exception as exc:
            raise ExternalServiceError(
                f"Kubeflow Pipelines at {self.host} did not report run {run_id}: {exc}",
                transient=True,
            ) from exc
        return FINISHED if state in self.FINAL_STATES else RUNNING

    def cancel(self, run_id: str, handle: str | None) -> None:
        if not handle:
            return
        try:
            self.client.terminate_run(handle.removeprefix("kfp:"))
        except Exception as exc:
            raise ExternalServiceError(
                f"Kubeflow Pipelines at {self.host} did not cancel run {run_id}: {exc}",
                transient=True,
            ) from exc


def backend_from_env(settings: Settings, *, local: bool | None = None) -> RunBackend:
    """KFP when ISSUEOPS_KFP_HOST is set (and not `local`), else the local subprocess runner."""
    host = settings.kfp_host
    if local is None:
        local = settings.operator_local
    if host and not local:
        return KfpRunBackend(
            host,
            experiment=settings.kfp_experiment,
            namespace=settings.kfp_namespace,
        )
    return LocalRunBackend(settings)
