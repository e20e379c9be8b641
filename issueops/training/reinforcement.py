"""Reinforcement learning on Ray RLlib's new API stack: ppo, dqn, a3c (run as APPO), appo, impala.

Ray is started here with ISSUEOPS_RAY_CPUS CPUs (default: all the machine has), or joined at
ISSUEOPS_RAY_ADDRESS (a KubeRay cluster or any running Ray; `auto` inside a RayJob). Training
stops at the spec's one budget (episodes, iterations or environment steps) or as soon as the
mean training return reaches the spec's threshold. The model directory then holds the RLlib
checkpoint and the greedy policy exported to ONNX; evaluation plays that exported policy.

`python -m issueops.training.reinforcement --run-id RUN` is the entrypoint of the KubeRay
RayJob (issueops.pipeline.rayjob): the same prepare and train steps, on the cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from issueops.errors import ExternalServiceError, InvalidInput, SpecError
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters

log = logging.getLogger(__name__)

# RLlib's class for each catalog name. RLlib no longer ships A3C: APPO is its asynchronous successor.
RLLIB_ALGORITHMS = {"ppo": "PPO", "dqn": "DQN", "a3c": "APPO", "appo": "APPO", "impala": "IMPALA"}
A3C_NOTE = "RLlib no longer ships A3C; a3c runs APPO, its maintained asynchronous actor-critic successor."
BUDGET_UNITS = ("num_episodes", "training_iterations", "timesteps")
DEFAULT_TIMESTEPS = 100_000
CHECKPOINT_DIR = "checkpoint"
POLICY_FILE = "policy.onnx"
RL_MODULE_PATH = "checkpoint/learner_group/learner/rl_module/default_policy"
METADATA = "metadata.json"
CONNECT_TIMEOUT_S = 5.0
MAX_EVALUATION_STEPS = 100_000  # per episode, for environments without a time limit


# ------------------------------------------------------------------------------ budget


@dataclass(frozen=True)
class Budget:
    """The one training budget, in the unit the user gave (or the default), and how it stops RLlib."""

    unit: str  # num_episodes | training_iterations | timesteps
    value: int
    given: bool

    def reached(self, progress: dict[str, Any]) -> bool:
        done = {
            "num_episodes": progress["episodes"],
            "training_iterations": progress["iteration"],
            "timesteps": progress["timesteps"],
        }[self.unit]
        return done >= self.value

    def describe(self, steps_per_iteration: int | None = None) -> str:
        """The budget in its own unit, and what it means in the other one."""
        names = {"num_episodes": "episode", "training_iterations": "iteration", "timesteps": "env step"}
        text = f"{self.value} {names[self.unit]}{'' if self.value == 1 else 's'}"
        if self.unit == "timesteps" and steps_per_iteration:
            iterations = math.ceil(self.value / steps_per_iteration)
            text += f" (about {iterations} iteration{'s' if iterations != 1 else ''} of {steps_per_iteration} steps)"
        elif self.unit == "training_iterations" and steps_per_iteration:
            text += f" (about {self.value * steps_per_iteration} env steps at {steps_per_iteration} per iteration)"
        elif self.unit == "num_episodes":
            text += " (counted as episodes finish; the last iteration may run a few more)"
        return text + ("" if self.given else "; the default, as no budget was given")

    def to_dict(self, steps_per_iteration: int | None = None) -> dict[str, Any]:
        return {
            **asdict(self),
            "env_steps_per_iteration": steps_per_iteration,
            "description": self.describe(steps_per_iteration),
        }


def resolve_budget(spec: TrainingSpec) -> Budget:
    """The spec's budget; one of num_episodes / training_iterations / timesteps, or the default."""
    given = [unit for unit in BUDGET_UNITS if spec.hyperparameters.get(unit) is not None]
    if len(given) > 1:
        raise SpecError(
            f"give one training budget, not {' and '.join(given)}: num_episodes, "
            "training_iterations or timesteps."
        )
    if not given:
        return Budget("timesteps", DEFAULT_TIMESTEPS, given=False)
    value = spec.hyperparameters[given[0]]
    if value < 1:  # the catalog already rejects it; kept for specs built without validation
        raise SpecError(f"the budget {given[0]} must be at least 1, got {value}.")
    return Budget(given[0], int(value), given=True)


# ------------------------------------------------------------------------- environment


def check_environment(spec: TrainingSpec) -> dict[str, Any]:
    """What the environment is, or a SpecError naming why this spec cannot train on it."""
    import gymnasium as gym

    if spec.algorithm not in RLLIB_ALGORITHMS:
        raise SpecError(f"algorithm {spec.algorithm} is not a reinforcement learning algorithm.")
    resolve_budget(spec)
    env_id = spec.environment
    try:
        env_spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise SpecError(
            f"environment {env_id!r} is not a registered Gymnasium environment ({exc}); "
            "for example CartPole-v1, Acrobot-v1, MountainCar-v0 or Pendulum-v1."
        ) from None
    try:
        env = gym.make(env_id)
    except gym.error.DependencyNotInstalled as exc:
        raise SpecError(f"environment {env_id} needs a package that is not installed here: {exc}") from None
    except Exception as exc:  # an environment that cannot be built cannot be trained on
        raise SpecError(f"environment {env_id} could not be created: {type(exc).__name__}: {exc}") from None
    try:
        observation, action = env.observation_space, env.action_space
    finally:
        env.close()

    problems = []
    if not isinstance(observation, gym.spaces.Box) or len(observation.shape) != 1:
        problems.append(
            f"environment {env_id} has observations {observation}; only flat vector (1-D Box) "
            "observations are supported."
        )
    if isinstance(action, gym.spaces.Discrete):
        action_kind = "discrete"
    elif isinstance(action, gym.spaces.Box) and len(action.shape) == 1:
        action_kind = "continuous"
    else:
        action_kind = "unsupported"
        problems.append(
            f"environment {env_id} has actions {action}; only Discrete or 1-D Box actions are supported."
        )
    if spec.algorithm == "dqn" and action_kind == "continuous":
        problems.append(
            f"DQN needs a discrete action space, but {env_id} has a continuous one ({action}); "
            "use ppo, appo or impala for continuous actions."
        )
    if spec.evaluation_metric == "success_rate" and env_spec.reward_threshold is None:
        problems.append(
            f"{env_id} has no solved threshold (reward_threshold), so success_rate cannot be scored; "
            "use evaluation_metric: episode_reward_mean with an evaluation_threshold."
        )
    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    if spec.algorithm in ("a3c", "appo", "impala") and params["num_env_runners"] < 1:
        problems.append(f"{spec.algorithm} samples asynchronously and needs num_env_runners of 1 or more.")
    if problems:
        raise SpecError(problems[0], problems=problems)
    address = os.environ.get("ISSUEOPS_RAY_ADDRESS")
    if address:
        probe_ray_address(address)
    info: dict[str, Any] = {
        "environment": env_id,
        "observation_space": str(observation),
        "observation_shape": list(observation.shape),
        "action_space": str(action),
        "action_kind": action_kind,
        "reward_threshold": env_spec.reward_threshold,
        "max_episode_steps": env_spec.max_episode_steps,
        "rllib_algorithm": RLLIB_ALGORITHMS[spec.algorithm],
    }
    if action_kind == "discrete":
        info["num_actions"] = int(action.n)
    else:
        info["action_low"] = [float(v) for v in action.low]
        info["action_high"] = [float(v) for v in action.high]
    if spec.algorithm == "a3c":
        info["note"] = A3C_NOTE
    return info


def prepare_environment(spec: TrainingSpec, out_dir: Path) -> dict[str, Any]:
    """The prepare_data step for RL: check the environment and record what it is in metadata.json."""
    info = check_environment(spec)
    metadata = {"learning_type": spec.learning_type, "task_type": spec.task_type, **info}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA).write_text(json.dumps(metadata, indent=2))
    return metadata


# ---------------------------------------------------------------------------------- Ray


def probe_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within about `timeout` seconds, with a sentence, unless a Ray server answers there.

    Ray's GCS and its client server both speak gRPC, so the probe opens HTTP/2 and waits for the
    server's SETTINGS frame: a closed port, a silent listener and a non-gRPC service all fail
    here, where ray.init would refuse slowly or wait forever.
    """
    if address in ("auto", "local"):
        return
    target = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = target.hostname, target.port or (10001 if address.startswith("ray://") else 6379)
    except ValueError:
        host = port = None
    if not host or port is None:
        raise InvalidInput(
            f"ISSUEOPS_RAY_ADDRESS {address!r} is not a Ray address; use host:port, ray://host:port or auto."
        )
    hint = "check ISSUEOPS_RAY_ADDRESS, or unset it to start Ray on this machine."
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # TLS first: the plaintext HTTP/2 handshake below does not apply
            conn.settimeout(timeout)
            conn.sendall(_HTTP2_PREFACE)
            reply = conn.recv(9)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ExternalServiceError(
            f"The Ray cluster at {address} does not answer ({reason}, waited at most {timeout:g} s); {hint}",
            transient=True,
        ) from None
    if len(reply) < 4 or reply[3] != _HTTP2_SETTINGS:
        raise ExternalServiceError(
            f"The service at {address} answered, but not as a Ray server (no gRPC handshake); {hint}"
        )


# The HTTP/2 client preface and an empty SETTINGS frame; a gRPC server replies with its SETTINGS.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HTTP2_SETTINGS = 0x04


def local_cpus() -> int:
    """CPUs for a locally started Ray: ISSUEOPS_RAY_CPUS, or all the machine has."""
    raw = os.environ.get("ISSUEOPS_RAY_CPUS", "").strip()
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

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        _check_cpus(cpus_needed, int(ray.cluster_resources().get("CPU", 0)), "the running Ray")
        yield "existing Ray session"
        return
    address = os.environ.get("ISSUEOPS_RAY_ADDRESS")
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


def steps_per_iteration(config) -> int | None:
    """Env steps one RLlib iteration samples, where fixed: PPO its train batch, DQN its minimum.

    APPO and IMPALA iterate on time (min_time_s_per_iteration), so their steps are not fixed.
    """
    name = type(config).__name__
    if name == "PPOConfig":
        return int(config.train_batch_size_per_learner)
    if name == "DQNConfig":
        return int(config.min_sample_timesteps_per_iteration or config.train_batch_size_per_learner)
    return None


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


def target_return(spec: TrainingSpec) -> float | None:
    """The mean training return at which training stops early: the spec's threshold on that metric."""
    if spec.evaluation_metric == "episode_reward_mean":
        return spec.evaluation_threshold
    return None


def train_reinforcement(
    spec: TrainingSpec, prepared_dir: Path | None, model_dir: Path, *, run_id: str = ""
) -> dict[str, Any]:
    """Train with RLlib until the budget or the target return; save checkpoint and ONNX policy."""
    _console_logging()
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
    reporter = _ProgressReporter(run_id, budget.to_dict(cadence), target)
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


def _environment_info(spec: TrainingSpec, prepared_dir: Path | None) -> dict[str, Any]:
    path = Path(prepared_dir) / METADATA if prepared_dir else None
    if path is not None and path.exists():
        metadata = json.loads(path.read_text())
        if metadata.get("environment") == spec.environment and "action_kind" in metadata:
            return metadata
    return check_environment(spec)


class _ProgressReporter:
    """Each iteration into the run record (runs/<run_id>/progress.json), where the status reads it."""

    def __init__(self, run_id: str, budget: dict[str, Any], target: float | None):
        self.run_id, self.budget, self.target = run_id, budget, target
        self.history: list[dict[str, Any]] = []
        self.record = None
        if run_id:
            try:
                from issueops.config import Settings
                from issueops.pipeline.runs import RunRecord
                from issueops.store import open_store

                self.record = RunRecord(open_store(Settings.from_env()), run_id)
            except Exception as exc:  # progress is a courtesy: it never stops training
                log.warning("progress will not be recorded for %s: %s", run_id, exc)

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


def _console_logging() -> None:
    """Progress lines on stderr when nobody configured logging (a pipeline step's own process)."""
    if not logging.getLogger().handlers:
        from issueops.logs import configure_logging

        configure_logging(os.environ.get("ISSUEOPS_LOG_LEVEL", "INFO"))


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


class OnnxPolicy:
    """The exported policy: greedy actions for a batch of observations, with onnxruntime only."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def act(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        return self.session.run(["action"], {"obs": obs})[0]


def load_policy(model_dir: Path) -> OnnxPolicy:
    from issueops.training.train import read_manifest

    return OnnxPolicy(Path(model_dir) / read_manifest(model_dir)["file"])


# ---------------------------------------------------------------------------- evaluation


def play_episodes(policy: OnnxPolicy, env_id: str, episodes: int, seed: int) -> list[dict[str, float]]:
    """Run the greedy policy for whole episodes; each with its return and length."""
    import gymnasium as gym

    env = gym.make(env_id)
    results = []
    try:
        for index in range(episodes):
            observation, _ = env.reset(seed=seed + index)
            total, steps, done = 0.0, 0, False
            while not done and steps < MAX_EVALUATION_STEPS:
                action = policy.act(observation)[0]
                if isinstance(env.action_space, gym.spaces.Discrete):
                    action = int(action)
                observation, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            results.append({"return": total, "length": steps})
    finally:
        env.close()
    return results


def success_threshold(spec: TrainingSpec, reward_threshold: float | None) -> tuple[float | None, str]:
    """The return that counts an episode as a success, and where that number comes from."""
    if spec.evaluation_metric == "episode_reward_mean" and spec.evaluation_threshold is not None:
        return spec.evaluation_threshold, "the spec's evaluation_threshold"
    if reward_threshold is not None:
        return float(reward_threshold), f"{spec.environment}'s solved threshold (reward_threshold)"
    return None, ""


def score_policy(spec: TrainingSpec, policy_file: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Play an exported policy greedily for the spec's `evaluation_episodes`, on seeds training never
    used: the metrics and the episodes they rest on. The same spec plays the same episodes, so two
    policies scored with it (a challenger and production's) are compared on the same games."""
    import gymnasium as gym

    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    # Training seeds its runners from random_state; evaluation starts a million seeds away.
    seed = params["random_state"] + 1_000_000
    episodes = play_episodes(OnnxPolicy(policy_file), spec.environment, params["evaluation_episodes"], seed)
    returns = np.array([e["return"] for e in episodes])
    lengths = np.array([e["length"] for e in episodes])
    metrics = {
        "episode_reward_mean": float(returns.mean()),
        "episode_reward_min": float(returns.min()),
        "episode_reward_max": float(returns.max()),
        "episode_reward_std": float(returns.std()),
        "episode_length_mean": float(lengths.mean()),
    }
    threshold, source = success_threshold(spec, gym.spec(spec.environment).reward_threshold)
    details: dict[str, Any] = {
        "environment": spec.environment,
        "episodes": len(episodes),
        "seeds": f"{seed}..{seed + len(episodes) - 1}",
        "episode_returns": [round(float(r), 4) for r in returns],
        "episode_lengths": [int(n) for n in lengths],
    }
    if threshold is not None:
        metrics["success_rate"] = float(np.mean(returns >= threshold))
        details["success_threshold"] = threshold
        details["success_threshold_source"] = source
    else:
        details["not_computed"] = {
            "success_rate": f"{spec.environment} has no solved threshold and the spec gives none"
        }
    return {k: round(v, 6) for k, v in metrics.items()}, details


def evaluate_reinforcement(
    spec: TrainingSpec, prepared_dir: Path, model_dir: Path, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Play the exported policy for `evaluation_episodes` episodes, on seeds training never used."""
    from issueops.training.train import read_manifest

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = read_manifest(model_dir)
    metrics, played = score_policy(spec, model_dir / manifest["file"])
    details: dict[str, Any] = {
        "environment": spec.environment,
        "algorithm": spec.algorithm,
        "rllib_algorithm": manifest.get("rllib_algorithm"),
        "episodes": played["episodes"],
        "policy": f"greedy actions of the exported {manifest['file']}",
        "seeds": played["seeds"],
        "episode_returns": played["episode_returns"],
        "episode_lengths": played["episode_lengths"],
        "budget": manifest.get("budget"),
        "stop_reason": manifest.get("stop_reason"),
        "training_iterations": manifest.get("iterations"),
        "training_timesteps": manifest.get("timesteps"),
        "training_seconds": manifest.get("training_seconds"),
    }
    details.update({k: v for k, v in played.items() if k not in details})
    threshold = played.get("success_threshold")
    if manifest.get("note"):
        details["note"] = manifest["note"]
    plots = [
        _plot_training_curve(manifest.get("training_history") or [], threshold, out_dir),
        _plot_evaluation(np.array(played["episode_returns"]), threshold, out_dir),
    ]
    return metrics, details, plots


def _plot_training_curve(history: list[dict[str, Any]], threshold: float | None, out_dir: Path) -> str:
    from issueops.evaluation.supervised import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    points = [
        (r["timesteps"], r["episode_return_mean"]) for r in history if r["episode_return_mean"] is not None
    ]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", label="mean training return")
    if threshold is not None:
        ax.axhline(threshold, linestyle="--", color="grey", label=f"success at {threshold:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return")
    ax.set_title("Training progress")
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out_dir / "training_curve.png")


def _plot_evaluation(returns: np.ndarray, threshold: float | None, out_dir: Path) -> str:
    from issueops.evaluation.supervised import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(1, len(returns) + 1), returns, color="tab:blue")
    if threshold is not None:
        ax.axhline(threshold, linestyle="--", color="grey", label=f"success at {threshold:g}")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel("evaluation episode")
    ax.set_ylabel("return")
    ax.set_title(f"Evaluation: mean return {returns.mean():.1f}")
    return _save(fig, out_dir / "evaluation_returns.png")


# ------------------------------------------------------------------- the RayJob entrypoint


def main(argv: list[str] | None = None) -> int:
    """Prepare and train one run on the Ray cluster this process runs in; record it in the store."""
    import argparse
    import tempfile

    from issueops.pipeline.steps import prepare_data_step, train_step

    parser = argparse.ArgumentParser(
        prog="python -m issueops.training.reinforcement", description=main.__doc__
    )
    parser.add_argument("--run-id", default=os.environ.get("ISSUEOPS_RUN_ID"), required=False)
    parser.add_argument("--spec-json", default=os.environ.get("ISSUEOPS_SPEC_JSON"))
    parser.add_argument("--work-dir", default=None, help="where processed/ and model/ are written")
    args = parser.parse_args(argv)
    if not args.run_id or not args.spec_json:
        parser.error("--run-id and --spec-json (or ISSUEOPS_RUN_ID and ISSUEOPS_SPEC_JSON) are required")
    _console_logging()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="issueops-rayjob-"))
    prepare_data_step(args.spec_json, args.run_id, str(work / "processed"))
    manifest = train_step(args.spec_json, args.run_id, str(work / "processed"), str(work / "model"))
    log.info("run %s trained: %s", args.run_id, manifest.get("stop_reason"))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
