"""PPO on CartPole-v1 to a mean return of 450: `issueops run` against a bare RLlib script.

Both are whole processes with the identical RLlib configuration (checked before timing): PPO on
the new API stack, one env runner, train batch 4000, 10 epochs, minibatch 256, lr 3e-4, seed 42,
stopping when the mean training return reaches 450. `issueops run` also prepares, exports the
ONNX policy, evaluates it for 10 episodes, judges, registers and writes the history; the bare
script only trains. Rounds alternate (A B A B ...) so drift hits both alike (BENCH_ROUNDS, default 1).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import timed_command

REPO = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
TARGET_RETURN = 450.0
MAX_TIMESTEPS = 400_000
TARGET_RATIO = 1.2

SPEC = f"""# PPO on CartPole-v1 until the mean return reaches {TARGET_RETURN:g} (benchmarks/bench_rl.py)
learning_type: reinforcement
algorithm: ppo
environment: CartPole-v1
hyperparameters:
  timesteps: {MAX_TIMESTEPS}
  train_batch_size: 4000
  num_epochs: 10
  minibatch_size: 256
  learning_rate: 0.0003
  gamma: 0.99
  clip_param: 0.3
  entropy_coeff: 0.0
  hidden_units: [256, 256]
  num_env_runners: 1
  random_state: 42
evaluation_metric: episode_reward_mean
evaluation_threshold: {TARGET_RETURN:g}
max_retry: 0
"""

# The bare script: plain RLlib, the same numbers as SPEC, and nothing else.
BARE = f"""
import json, os, time
import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

def make_config():
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1)
        .learners(num_learners=0)
        .training(gamma=0.99, lr=0.0003, train_batch_size_per_learner=4000, num_epochs=10,
                  minibatch_size=256, clip_param=0.3, entropy_coeff=0.0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256, 256]))
        .debugging(seed=42)
    )

if __name__ == "__main__":
    cpus = int(os.environ.get("ISSUEOPS_RAY_CPUS") or 0) or os.cpu_count()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    algo = make_config().build_algo()
    started = time.monotonic()
    while True:
        result = algo.train()
        runners = result[ENV_RUNNER_RESULTS]
        ret = runners.get(EPISODE_RETURN_MEAN)
        steps = runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        if (ret is not None and ret >= {TARGET_RETURN}) or steps >= {MAX_TIMESTEPS}:
            break
    loop_s = time.monotonic() - started
    algo.stop()
    ray.shutdown()
    print(json.dumps({{"iterations": result["training_iteration"], "return": float(ret), "timesteps": int(steps),
                      "loop_s": loop_s}}))
"""


def _configs_identical(bare_file: Path) -> bool:
    """The RLlib config issueops builds for SPEC equals the bare script's, key for key."""
    import importlib.util

    from issueops.spec.body import parse_issue_body
    from issueops.training.reinforcement.ray import build_config

    loader = importlib.util.spec_from_file_location("bare_rl", bare_file)
    bare = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bare)
    ours = build_config(parse_issue_body(SPEC)).to_dict()
    theirs = bare.make_config().to_dict()
    differing = sorted(k for k in set(ours) | set(theirs) if repr(ours.get(k)) != repr(theirs.get(k)))
    if differing:
        print(f"   config differs in: {', '.join(differing)}")
    return not differing


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        spec_file, bare_file = Path(work) / "ppo-cartpole.yaml", Path(work) / "bare_rl.py"
        spec_file.write_text(SPEC)
        bare_file.write_text(BARE)
        if not _configs_identical(bare_file):
            raise SystemExit("the bare script's RLlib config is not the one issueops builds")
        env = {
            **os.environ,
            "ISSUEOPS_HOME": str(Path(work) / "home"),
            "ISSUEOPS_NOTIFY": "console",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        run = [sys.executable, "-m", "issueops", "run", str(spec_file), "--json"]
        bare = [sys.executable, str(bare_file)]
        run_times, bare_times, runs, bares = [], [], [], []
        for _ in range(ROUNDS):
            elapsed, out = timed_command(run, env)
            run_times.append(elapsed)
            runs.append(json.loads(out))
            evaluation = (
                Path(env["ISSUEOPS_HOME"]) / "store" / "evaluations" / runs[-1]["run_id"] / "results.json"
            )
            runs[-1]["training"] = json.loads(evaluation.read_text())["details"]
            elapsed, out = timed_command(bare, env)
            bare_times.append(elapsed)
            bares.append(json.loads(out.strip().splitlines()[-1]))  # after any RLlib chatter
    result, trained = runs[-1], bares[-1]
    training = result["training"]
    r, b = statistics.median(run_times), statistics.median(bare_times)
    ratios = [x / y for x, y in zip(run_times, bare_times, strict=True)]
    print(
        f"   issueops run (PPO, CartPole-v1 to {TARGET_RETURN:g}): {r:.1f} s median of {ROUNDS} "
        f"({training['training_iterations']} iterations, {training['training_timesteps']} env steps, "
        f"training loop {training['training_seconds']:.1f} s; decision {result['decision']}, "
        f"evaluation mean return {result['metrics']['episode_reward_mean']:.1f} over {training['episodes']} episodes)"
    )
    print(
        "   issueops steps: " + ", ".join(f"{s['name']} {s['seconds'] or 0:.1f} s" for s in result["steps"])
    )
    print(
        f"   bare RLlib script, identical config:     {b:.1f} s median "
        f"({trained['iterations']} iterations, {trained['timesteps']} env steps, training loop "
        f"{trained['loop_s']:.1f} s, mean return {trained['return']:.1f})"
    )
    print(
        f"   ratio issueops/bare: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; "
        f"target <= {TARGET_RATIO:g})"
    )


if __name__ == "__main__":
    main()
