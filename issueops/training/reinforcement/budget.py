"""The reinforcement-learning budget: the spec's one stopping unit (episodes, iterations or environment
steps), RLlib's class for each catalog name, and the return that stops training early.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from issueops.errors import SpecError
from issueops.spec.body import TrainingSpec

# RLlib's class for each catalog name. RLlib no longer ships A3C: APPO is its asynchronous successor.
RLLIB_ALGORITHMS = {"ppo": "PPO", "dqn": "DQN", "a3c": "APPO", "appo": "APPO", "impala": "IMPALA"}
A3C_NOTE = "RLlib no longer ships A3C; a3c runs APPO, its maintained asynchronous actor-critic successor."
BUDGET_UNITS = ("num_episodes", "training_iterations", "timesteps")
DEFAULT_TIMESTEPS = 100_000


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


def target_return(spec: TrainingSpec) -> float | None:
    """The mean training return at which training stops early: the spec's threshold on that metric."""
    if spec.evaluation_metric == "episode_reward_mean":
        return spec.evaluation_threshold
    return None
