"""Run one attempt of a request: the same pipeline function on KFP's local runner or a KFP cluster."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from issueops.config import Settings, child_settings, utcnow
from issueops.errors import ExternalServiceError, IssueOpsError, error_kind, recorded_error
from issueops.pipeline.prefork import ServerGone, active_server, prefork_tasks, preload_for
from issueops.pipeline.runs import (
    RunRecord,
    collect_result,
    mark_finished,
    mark_interrupted,
    mark_owner,
    new_run_id,
)
from issueops.results import RunResult, StepTiming
from issueops.spec.body import TrainingSpec
from issueops.store import ObjectStore, open_store

ProgressCallback = Callable[[StepTiming], None]


def preflight(spec: TrainingSpec, settings: Settings, store: ObjectStore | None = None) -> None:
    """Input problems found before anything runs, so bad input costs no pipeline and writes nothing.

    Checked in a fork of the preloaded task process when one is up: the dataset libraries are
    already imported there, and this process need not import them at all.
    """
    server = active_server()
    if server is not None:
        with contextlib.suppress(ServerGone):  # the preloaded process is gone: check here instead
            return server.call(check_inputs, spec, settings)
    check_inputs(spec, settings, store)


def check_inputs(spec: TrainingSpec, settings: Settings, store: ObjectStore | None = None) -> None:
    if spec.learning_type == "reinforcement":
        from issueops.training.reinforcement.environment import check_environment

        check_environment(spec)
    else:
        from issueops.data.prepare import check_dataset

        check_dataset(spec, settings, store or open_store(settings))


def start_request(
    store: ObjectStore,
    spec: TrainingSpec,
    *,
    issue: int | None = None,
    repository: str | None = None,
    attempt: int = 1,
    run_id: str | None = None,
) -> str:
    run_id = run_id or new_run_id()
    RunRecord(store, run_id).write(
        "request.json",
        {
            "spec": spec.to_dict(),
            "issue": issue,
            "repository": repository,
            "attempt": attempt,
            "started_at": utcnow().isoformat(),
        },
    )
    return run_id


def run_local(
    spec: TrainingSpec,
    *,
    settings: Settings | None = None,
    issue: int | None = None,
    repository: str | None = None,
    attempt: int = 1,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    checked: bool = False,
) -> RunResult:
    """Run the training pipeline with kfp.local.SubprocessRunner and return the attempt's result.

    Tasks start as forks of a preloaded process (issueops.pipeline.prefork). The runner's own chatter goes to
    logs/<run_id>.log under ISSUEOPS_HOME; a failed step's explanation comes back in the result
    (decision 'error') or as the step's own error.
    """
    settings = settings or Settings.from_env()
    store = open_store(settings)
    with prefork_tasks(preload_for(spec.algorithm, spec.learning_type), env=child_settings(settings)):
        if not checked:
            preflight(spec, settings, store)
        run_id = start_request(
            store, spec, issue=issue, repository=repository, attempt=attempt, run_id=run_id
        )
        with _owned_run(store, run_id):  # if this process dies, the record reads as interrupted
            log_path = settings.home / "logs" / f"{run_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)

            from kfp import local

            local.init(
                runner=local.SubprocessRunner(use_venv=False),
                pipeline_root=str(settings.home / "kfp"),
                raise_on_error=False,
            )
            from issueops.pipeline.graph import training_pipeline

            watcher = _StepWatcher(RunRecord(store, run_id), progress) if progress else None
            if watcher:
                watcher.start()
            try:
                with _redirect_output(log_path):
                    training_pipeline(spec_json=spec.to_json(), run_id=run_id, attempt=attempt)
            finally:
                if watcher:
                    watcher.stop()
    result = collect_result(store, run_id)
    result.artifacts["log"] = str(log_path)
    failure = run_failure(run_id, RunRecord(store, run_id).error(), result.decision, log_path)
    if failure:
        raise failure
    return result


def run_failure(run_id: str, error: dict | None, decision: str, log_path: Path) -> IssueOpsError | None:
    """What a finished local run raises, from its record's error.json and its decision.

    An error whose class has an answer of its own (bad input, a missing model, a conflict)
    reaches the caller as that kind, with the step's sentences; a failure of ours or of a service
    (the base answer, ExternalServiceError) is told with its run, step and log."""
    if error:
        kind = error_kind(error.get("lineage") or [error.get("kind", "")])
        if not issubclass(kind, ExternalServiceError) and kind.answer != IssueOpsError.answer:
            return recorded_error(error.get("lineage") or [error["kind"]], error["problems"])
    if decision in ("unknown", "error"):
        reason = "; ".join(error["problems"]) if error else "the pipeline stopped without a decision"
        return ExternalServiceError(
            f"Run {run_id} failed in step {error['step'] if error else '?'}: {reason} (log: {log_path})."
        )
    return None


@contextlib.contextmanager
def _owned_run(store: ObjectStore, run_id: str):
    """This process runs the run: its record names the process, and says how the run ended."""
    mark_owner(store, run_id)
    try:
        yield
    except Exception:
        mark_finished(store, run_id)
        raise
    except BaseException as exc:  # Ctrl-C, or a stop signal made SystemExit: its tasks end with it
        mark_interrupted(store, run_id, f"the run was stopped ({type(exc).__name__})")
        raise
    else:
        mark_finished(store, run_id)


@contextlib.contextmanager
def _redirect_output(path: Path):
    """Send fd 1 and 2 (the runner and its subprocesses) to a file; stdout stays for results."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _StepWatcher(threading.Thread):
    """Reports each step's change of state from the run record while the pipeline runs."""

    def __init__(self, record: RunRecord, callback: ProgressCallback, interval: float = 0.3):
        super().__init__(daemon=True)
        self.record, self.callback, self.interval = record, callback, interval
        self.seen: dict[str, str] = {}
        self.iteration = 0
        self._halt = threading.Event()

    def poll(self) -> None:
        for step in self.record.steps():
            if self.seen.get(step.name) != step.status:
                self.seen[step.name] = step.status
                self.callback(step)
        if self.seen.get("train") == "running":
            self._poll_training_progress()

    def _poll_training_progress(self) -> None:
        """Iterations that long trainings (RL) write to runs/<run>/progress.json, as 'running: ...'."""
        progress = self.record.read("progress.json") or {}
        iteration = progress.get("iteration") or 0
        if iteration > self.iteration:
            self.iteration = iteration
            ret = progress.get("episode_return_mean")
            note = f"iteration {iteration}, return {'—' if ret is None else f'{ret:.1f}'}"
            self.callback(StepTiming("train", f"running: {note}", progress.get("elapsed_s")))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with contextlib.suppress(Exception):
                self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        with contextlib.suppress(Exception):
            self.poll()  # what the last steps did since the previous poll
        self.poll()


def status_sink(settings: Settings, issue: int | None):
    """Where a request's status goes: its GitHub issue when one is configured, else the log."""
    from issueops.github import configured_client
    from issueops.reporting.status import ConsoleSink, GitHubCommentSink

    client = configured_client(settings) if issue is not None else None
    return GitHubCommentSink(client, issue) if client else ConsoleSink()


def run_with_status(
    spec: TrainingSpec,
    *,
    settings: Settings | None = None,
    issue: int | None = None,
    repository: str | None = None,
    attempt: int = 1,
    sink=None,
    progress: ProgressCallback | None = None,
    run_id: str | None = None,
) -> RunResult:
    """run_local with one status comment for the attempt, created at start and edited per step.

    run_id: chosen by the caller when it must name the run before it ends (the MCP tool does).
    """
    settings = settings or Settings.from_env()
    preload = preload_for(spec.algorithm, spec.learning_type)
    with prefork_tasks(preload, env=child_settings(settings)):  # preloads while we check
        from issueops.pipeline.runs import PIPELINE_STEPS
        from issueops.reporting.status import StatusReport

        run_id = run_id or new_run_id()
        target = spec.dataset_id or spec.environment
        report = StatusReport(
            sink or status_sink(settings, issue),
            f"Training {spec.algorithm} on {target} (attempt {attempt})",
            PIPELINE_STEPS,
            run_id=run_id,
        )

        def on_step(step: StepTiming) -> None:
            if step.status.startswith("running: "):
                report.step_progress(step.name, step.status.removeprefix("running: "))
            elif step.status == "running":
                report.step_started(step.name)
            else:
                report.step_finished(step.name, step.status, step.seconds)
            if progress:
                progress(step)

        preflight(spec, settings)  # bad input: no status comment, nothing run
        report.start()
        result = run_local(
            spec,
            settings=settings,
            issue=issue,
            repository=repository or settings.github_repository,
            attempt=attempt,
            run_id=run_id,
            progress=on_step,
            checked=True,
        )
        report.finish(result)
    return result
