"""Evaluation of a reinforcement-learning model: the exported greedy ONNX policy played for the spec's
evaluation episodes on seeds training never used; the metrics and the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from issueops.evaluation.plots import pyplot, save
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters
from issueops.training.train import read_manifest

MAX_EVALUATION_STEPS = 100_000  # per episode, for environments without a time limit


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
    plt = pyplot()
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
    return save(fig, out_dir / "training_curve.png")


def _plot_evaluation(returns: np.ndarray, threshold: float | None, out_dir: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(1, len(returns) + 1), returns, color="tab:blue")
    if threshold is not None:
        ax.axhline(threshold, linestyle="--", color="grey", label=f"success at {threshold:g}")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel("evaluation episode")
    ax.set_ylabel("return")
    ax.set_title(f"Evaluation: mean return {returns.mean():.1f}")
    return save(fig, out_dir / "evaluation_returns.png")
