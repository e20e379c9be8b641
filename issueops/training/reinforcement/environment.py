"""The Gymnasium environment of an RL spec: checked (spaces, time limit) and recorded as the prepare_data step's metadata.json."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput, SpecError
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters
from issueops.training.reinforcement.budget import A3C_NOTE, RLLIB_ALGORITHMS, resolve_budget

METADATA = "metadata.json"


# ------------------------------------------------------------------------- environment


CONNECT_TIMEOUT_S = 5.0


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
    address = Settings.from_env().ray_address
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


def _environment_info(spec: TrainingSpec, prepared_dir: Path | None) -> dict[str, Any]:
    path = Path(prepared_dir) / METADATA if prepared_dir else None
    if path is not None and path.exists():
        metadata = json.loads(path.read_text())
        if metadata.get("environment") == spec.environment and "action_kind" in metadata:
            return metadata
    return check_environment(spec)
