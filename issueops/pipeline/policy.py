"""Per-step timeouts and retries (the README's "The pipeline" lists them), applied to KFP tasks and the local runner alike."""

from __future__ import annotations

from dataclasses import dataclass

from issueops.config import Settings


@dataclass(frozen=True)
class StepPolicy:
    """A step's time limit, and how many times KFP (or the local runner) may run it again after a
    failure. KFP retries any failed task; the step guard ends a retry at once, with the same error,
    when the error's kind may not be retried (issueops.errors.ANSWERS: bad input, a conflict)."""

    timeout_s: int
    retries: int


STEP_POLICIES: dict[str, StepPolicy] = {
    "prepare_data": StepPolicy(15 * 60, 3),
    "train": StepPolicy(60 * 60, 1),
    "evaluate": StepPolicy(15 * 60, 3),
    "judge": StepPolicy(5 * 60, 0),
    "register": StepPolicy(10 * 60, 3),
    "package": StepPolicy(20 * 60, 1),
    "build_tensorrt_engine": StepPolicy(30 * 60, 1),
    "promote": StepPolicy(10 * 60, 3),
    "deploy": StepPolicy(10 * 60, 3),
    "rollback": StepPolicy(10 * 60, 3),
    "write_history": StepPolicy(5 * 60, 3),
    "notify": StepPolicy(5 * 60, 3),
}


def retry_backoff() -> str:
    """First retry delay; KFP doubles it each time. ISSUEOPS_RETRY_BACKOFF overrides (e.g. '0s');
    unset, 1s when the pipeline is compiled for the local runner (kfp.local initialised), else 30s."""
    from kfp.local import config as local_config

    local = local_config.LocalExecutionConfig.instance is not None
    return Settings.from_env().retry_backoff or ("1s" if local else "30s")
