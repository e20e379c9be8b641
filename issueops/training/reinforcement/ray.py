"""Reinforcement learning on Ray RLlib's new API stack: ppo, dqn, a3c (run as APPO), appo, impala.

Ray is started here with ISSUEOPS_RAY_CPUS CPUs (default: all the machine has), or joined at
ISSUEOPS_RAY_ADDRESS (a KubeRay cluster or any running Ray; `auto` inside a RayJob). Training
stops at the spec's one budget (episodes, iterations or environment steps) or as soon as the
mean training return reaches the spec's threshold. The model directory then holds the RLlib
checkpoint and the greedy policy exported to ONNX; evaluation plays that exported policy.

`python -m issueops.pipeline.rayjob_entrypoint --run-id RUN` is the entrypoint of the KubeRay
RayJob (issueops.pipeline.rayjob): the same prepare and train steps, on the cluster."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters
from issueops.training.reinforcement.budget import (
    A3C_NOTE,
    RLLIB_ALGORITHMS,
    resolve_budget,
    steps_per_iteration,
    target_return,
)
from issueops.training.reinforcement.environment import _environment_info, probe_ray_address

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
POLICY_FILE = "policy.onnx"
RL_MODULE_PATH = "checkpoint/learner_group/learner/rl_module/default_policy"


# ---------------------------------------------------------------------------------- Ray


def local_cpus() -> int:
    """CPUs for a locally started Ray: ISSUEOPS_RAY_CPUS, or all the machine has."""
    raw = Settings.from_env().ray_cpus.strip()
    if not raw:
        return os.cpu_count() or 1
    try:
        cpus = int(raw)
    except ValueError:
        cpus = -1
    if cpus < 0:
        raise InvalidInput(f"ISSUEOPS_RAY_CPUS must be a whole number of CPUs, got {raw!r}.")
    return cpus or os.cpu_count() or 1


@contextlib.contextmanager
def ray_session(cpus_needed: int) -> Iterator[str]:
    """Ray for one training: joined at ISSUEOPS_RAY_ADDRESS, else started here and stopped after.

    A Ray already initialised in this process (a test session, a notebook) is used as it is.
    """
    import ray

    # Ray's own variable, read by Ray in this process and the workers it starts: no usage reports.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        _check_cpus(cpus_needed, int(ray.cluster_resources().get("CPU", 0)), "the running Ray")
        yield "existing Ray session"
        return
    address = Settings.from_env().ray_address
    if address:
        probe_ray_address(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise ExternalServiceError(f"Could not join the Ray cluster at {address}: {exc}") from None
        where = f"Ray cluster at {address}"
    else:
        cpus = local_cpus()
        _check_cpus(cpus_needed, cpus, f"Ray on this machine (ISSUEOPS_RAY_CPUS={cpus})")
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        where = f"local Ray with {cpus} CPU(s)"
    try:
        yield where
    finally:
        ray.shutdown()


def _check_cpus(needed: int, available: int, where: str) -> None:
    # Actors that cannot be placed would wait for CPUs forever: refuse instead of hanging.
    if needed > available:
        raise InvalidInput(
            f"num_env_runners asks for {needed} CPU(s) but {where} has {available}; "
            "lower num_env_runners or give Ray more CPUs."
        )


# ------------------------------------------------------------------------------ training


def build_config(spec: TrainingSpec, params: dict[str, Any] | None = None):
    """The RLlib AlgorithmConfig for the spec, on the new API stack (the benchmark reuses it)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    params = params or resolved_hyperparameters(spec.algo, spec.hyperparameters)
    name = RLLIB_ALGORITHMS[spec.algorithm]
    if name == "PPO":
        from ray.rllib.algorithms.ppo import PPOConfig as Config
    elif name == "DQN":
        from ray.rllib.algorithms.dqn import DQNConfig as Config
    elif name == "APPO":
        from ray.rllib.algorithms.appo import APPOConfig as Config
    else:
        from ray.rllib.algorithms.impala import IMPALAConfig as Config
    batch = params["train_batch_size"]
    config = (
        Config()
        .environment(spec.environment)
        .env_runners(num_env_runners=params["num_env_runners"])
        # The learner runs in the driver process: no extra actor, one CPU fewer to reserve.
        .learners(num_learners=0)
        .training(gamma=params["gamma"], lr=params["learning_rate"], train_batch_size_per_learner=batch)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(params["hidden_units"])))
        .debugging(seed=params["random_state"])
    )
    if name == "PPO":
        config.training(
            num_epochs=params["num_epochs"],
            minibatch_size=min(params["minibatch_size"], batch),
            clip_param=params["clip_param"],
            entropy_coeff=params["entropy_coeff"],
        )
    elif name == "DQN":
        config.training(
            replay_buffer_config={
                **config.replay_buffer_config,
                "capacity": params["replay_buffer_capacity"],
            },
            target_network_update_freq=params["target_network_update_freq"],
            num_steps_sampled_before_learning_starts=params["learning_starts"],
            epsilon=[(0, 1.0), (params["exploration_timesteps"], params["exploration_final_epsilon"])],
            double_q=params["double_q"],
            dueling=params["dueling"],
        )
    else:
        config.training(entropy_coeff=params["entropy_coeff"])
    return config


def progress_row(result: dict[str, Any], started: float) -> dict[str, Any]:
    """The few numbers of one RLlib iteration a person follows: iteration, return, steps, time."""
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_LEN_MEAN,
        EPISODE_RETURN_MEAN,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
        NUM_EPISODES_LIFETIME,
    )

    runners = result.get(ENV_RUNNER_RESULTS) or {}
    episode_return = runners.get(EPISODE_RETURN_MEAN)
    episode_length = runners.get(EPISODE_LEN_MEAN)
    return {
        "iteration": int(result["training_iteration"]),
        "episode_return_mean": _finite(episode_return),
        "episode_len_mean": _finite(episode_length),
        "timesteps": int(
            runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or result.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0
        ),
        "episodes": int(runners.get(NUM_EPISODES_LIFETIME) or 0),
        "elapsed_s": round(time.monotonic() - started, 2),
    }


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def train_reinforcement(
    spec: TrainingSpec, prepared_dir: Path | None, model_dir: Path, *, run_id: str = "", progress=None
) -> dict[str, Any]:
    """Train with RLlib until the budget or the target return; save checkpoint and ONNX policy.

    progress: where each iteration is recorded (write(name, data), e.g. the run's RunRecord), or None."""
    console_logging()
    info = _environment_info(spec, prepared_dir)
    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    budget = resolve_budget(spec)
    rllib_name = RLLIB_ALGORITHMS[spec.algorithm]
    target = target_return(spec)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if spec.algorithm == "a3c":
        log.info("a3c: %s", A3C_NOTE)
    config = build_config(spec, params)
    cadence = steps_per_iteration(config)
    reporter = _ProgressReporter(progress, budget.to_dict(cadence), target)
    with ray_session(cpus_needed=params["num_env_runners"]) as where:
        log.info(
            "training %s (RLlib %s) on %s with %s; budget %s%s",
            spec.algorithm,
            rllib_name,
            spec.environment,
            where,
            budget.describe(cadence),
            "" if target is None else f"; stops early at mean return {target:g}",
        )
        algo = config.build_algo()
        try:
            started = time.monotonic()
            stop_reason = ""
            while not stop_reason:
                row = progress_row(algo.train(), started)
                reporter.add(row)
                shown = "n/a" if row["episode_return_mean"] is None else f"{row['episode_return_mean']:.1f}"
                log.info(
                    "iteration %d: mean return %s, %d env steps, %d episodes, %.1f s elapsed",
                    row["iteration"],
                    shown,
                    row["timesteps"],
                    row["episodes"],
                    row["elapsed_s"],
                )
                if budget.reached(row):
                    stop_reason = f"budget reached: {budget.describe(cadence)}"
                elif target is not None and (row["episode_return_mean"] or -math.inf) >= target:
                    stop_reason = f"mean training return {row['episode_return_mean']:g} reached the threshold {target:g}"
            training_seconds = round(time.monotonic() - started, 2)
            algo.save_to_path(str((model_dir / CHECKPOINT_DIR).resolve()))
        finally:
            algo.stop()
    # The learner's module, as checkpointed: with APPO and IMPALA the driver's copy
    # (algo.get_module()) may lag the learner by an asynchronous weight broadcast.
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(str((model_dir / RL_MODULE_PATH).resolve()))
    export_policy(module, info, model_dir / POLICY_FILE, dqn=rllib_name == "DQN")
    reporter.finish(stop_reason)
    log.info("stopped after %d iterations: %s", row["iteration"], stop_reason)
    manifest = {
        "format": "onnx-policy",
        "file": POLICY_FILE,
        "checkpoint": CHECKPOINT_DIR,
        "rl_module": RL_MODULE_PATH,
        "environment": spec.environment,
        "rllib_algorithm": rllib_name,
        "hyperparameters": params,
        "budget": budget.to_dict(cadence),
        "stop_reason": stop_reason,
        "training_seconds": training_seconds,
        "iterations": row["iteration"],
        "timesteps": row["timesteps"],
        "episodes": row["episodes"],
        "final_training_return_mean": row["episode_return_mean"],
        "training_history": reporter.history,
        "ray": where,
        "observation_shape": info["observation_shape"],
        "action_space": info["action_space"],
        "action_kind": info["action_kind"],
        "inputs": {"obs": ["batch", *info["observation_shape"]]},
        "outputs": {"action": "greedy action", "scores": "action logits (Q-values for DQN)"},
        "servable": True,
    }
    if spec.algorithm == "a3c":
        manifest["note"] = A3C_NOTE
    return manifest


class _ProgressReporter:
    """Each iteration into the run record (runs/<run_id>/progress.json), where the status reads it.

    The record is handed in by the caller (training imports nothing from pipeline/)."""

    def __init__(self, record, budget: dict[str, Any], target: float | None):
        self.budget, self.target = budget, target
        self.history: list[dict[str, Any]] = []
        self.record = record  # anything with write(name, data): the pipeline passes the run's RunRecord

    def add(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self._write(done=False)

    def finish(self, stop_reason: str) -> None:
        self._write(done=True, stop_reason=stop_reason)

    def _write(self, *, done: bool, stop_reason: str = "") -> None:
        if self.record is None:
            return
        latest = self.history[-1] if self.history else {}
        try:
            self.record.write(
                "progress.json",
                {
                    **latest,
                    "done": done,
                    "stop_reason": stop_reason,
                    "budget": self.budget,
                    "target_return": self.target,
                    "history": self.history,
                },
            )
        except Exception as exc:
            log.warning("could not record progress: %s", exc)


def console_logging() -> None:
    """Progress lines on stderr when nobody configured logging (a pipeline step's own process)."""
    if not logging.getLogger().handlers:
        from issueops.logs import configure_logging

        configure_logging(Settings.from_env().log_level or "INFO")


# ----------------------------------------------------------------------------- the policy


def greedy_policy_module(module, info: dict[str, Any], *, dqn: bool):
    """An nn.Module: observations → (greedy action, scores), with RLlib's action unsquashing."""
    import torch
    from torch import nn

    discrete = info["action_kind"] == "discrete"
    low = torch.tensor(info.get("action_low") or [0.0], dtype=torch.float32)
    high = torch.tensor(info.get("action_high") or [0.0], dtype=torch.float32)
    bounded = bool(torch.isfinite(low).all() and torch.isfinite(high).all())

    class GreedyPolicy(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, obs):
            if dqn:
                scores = self.module.compute_q_values({"obs": obs})["qf_preds"]
            else:
                scores = self.module.forward_inference({"obs": obs})["action_dist_inputs"]
            if discrete:
                return torch.argmax(scores, dim=-1), scores
            mean = scores[..., : low.shape[0]]
            if bounded:
                # RLlib learns in [-1, 1] (normalize_actions) and maps to the bounds for the env.
                mean = torch.clamp(low + (mean + 1.0) * (high - low) / 2.0, low, high)
            return mean, scores

    return GreedyPolicy().eval()


def _nanmean_symbolic(g, x, dim, keepdim, dtype):  # noqa: ARG001 - the aten signature
    """aten::nanmean in ONNX (DQN's dueling head centres advantages with it): sum / count of non-NaN."""
    import torch
    from torch.onnx import symbolic_helper

    axes = g.op("Constant", value_t=torch.tensor(symbolic_helper._parse_arg(dim, "is"), dtype=torch.long))
    keep = symbolic_helper._parse_arg(keepdim, "i")
    present = g.op("Not", g.op("IsNaN", x))
    total = g.op(
        "ReduceSum",
        g.op("Where", present, x, g.op("Constant", value_t=torch.tensor(0.0))),
        axes,
        keepdims_i=keep,
    )
    count = g.op("ReduceSum", g.op("Cast", present, to_i=1), axes, keepdims_i=keep)  # 1 = FLOAT
    return g.op("Div", total, count)


def export_policy(module, info: dict[str, Any], path: Path, *, dqn: bool) -> Path:
    """The trained RLModule's greedy policy as ONNX: input `obs` [batch, n], outputs action, scores."""
    import torch

    torch.onnx.register_custom_op_symbolic("aten::nanmean", _nanmean_symbolic, 17)
    policy = greedy_policy_module(module, info, dqn=dqn)
    example = torch.zeros(1, *info["observation_shape"], dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            policy,
            (example,),
            str(path),
            dynamo=False,
            input_names=["obs"],
            output_names=["action", "scores"],
            dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}, "scores": {0: "batch"}},
        )
    return path
