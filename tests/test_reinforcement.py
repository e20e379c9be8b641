"""Reinforcement learning on Ray RLlib: the real pipeline for PPO, plain functions for DQN, a3c
and IMPALA on a shared local Ray, bad input, and the KubeRay RayJob generated from a spec.

Budgets are one or two iterations; the `slow` test trains PPO on CartPole-v1 to a mean return of 450.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from issueops.errors import ExternalServiceError, InvalidInput, NotFound, SpecError
from issueops.evaluation.reinforcement import OnnxPolicy, play_episodes
from issueops.evaluation.supervised import evaluate_model
from issueops.spec.body import parse_issue_body
from issueops.training.reinforcement.budget import A3C_NOTE, resolve_budget
from issueops.training.reinforcement.environment import (
    check_environment,
    prepare_environment,
    probe_ray_address,
)
from issueops.training.train import read_manifest, train_model
from tests.conftest import EXAMPLES, REPO
from tests.kube_double import ApiServerDouble

TINY_PPO = "{training_iterations: 1, train_batch_size: 500, minibatch_size: 128, num_epochs: 2, hidden_units: [32, 32], evaluation_episodes: 3}"


def rl_spec(algorithm: str, hyperparameters: str, environment: str = "CartPole-v1", extra: str = ""):
    return parse_issue_body(
        f"learning_type: reinforcement\nalgorithm: {algorithm}\nenvironment: {environment}\n"
        f"hyperparameters: {hyperparameters}\n{extra}"
    )


def cli(*args, home: Path, env: dict | None = None, timeout: float = 600):
    environ = {**os.environ, "ISSUEOPS_HOME": str(home), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "issueops.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the tests that call train_model directly; training reuses it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
    )
    yield
    ray.shutdown()


def train_and_evaluate(spec, tmp_path: Path):
    prepare_environment(spec, tmp_path / "p")
    trained = train_model(spec, tmp_path / "p", tmp_path / "m")
    return trained, evaluate_model(spec, tmp_path / "p", tmp_path / "m", tmp_path / "e")


def assert_policy_loads_and_acts(model_dir: Path, environment: str = "CartPole-v1"):
    """The exported ONNX policy plays whole episodes and is the checkpointed RLModule's greedy policy."""
    import gymnasium as gym
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    manifest = read_manifest(model_dir)
    policy = OnnxPolicy(model_dir / manifest["file"])
    episodes = play_episodes(policy, environment, episodes=2, seed=7)
    assert len(episodes) == 2 and all(e["length"] >= 1 for e in episodes)
    space = gym.make(environment).observation_space
    space.seed(0)
    observations = np.stack([space.sample() for _ in range(64)]).astype(np.float32)
    module = RLModule.from_checkpoint(str(model_dir / manifest["rl_module"]))
    with torch.no_grad():
        batch = {"obs": torch.as_tensor(observations)}
        if manifest["rllib_algorithm"] == "DQN":
            scores = module.compute_q_values(batch)["qf_preds"].numpy()
        else:
            scores = module.forward_inference(batch)["action_dist_inputs"].numpy()
    exported = policy.session.run(["scores"], {"obs": observations})[0]
    assert np.allclose(exported, scores, atol=1e-4)
    if manifest["action_kind"] == "discrete":
        assert np.array_equal(policy.act(observations), scores.argmax(axis=1))
    return policy, scores


# ------------------------------------------------------------------ the pipeline (PPO)


def test_ppo_runs_the_pipeline_and_saves_a_policy_that_acts(home):
    body = home.parent / "ppo.yaml"
    body.write_text(
        "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\n"
        f"hyperparameters: {TINY_PPO}\n"
    )
    done = cli("run", str(body), "--json", home=home, env={"ISSUEOPS_RAY_CPUS": "2"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "pass" and "No evaluation_threshold" in result["message"]
    assert result["evaluation_metric"] == "episode_reward_mean"
    metrics = result["metrics"]
    assert {"episode_reward_mean", "episode_reward_min", "episode_reward_max", "success_rate"} <= set(metrics)
    assert metrics["episode_reward_min"] <= metrics["episode_reward_mean"] <= metrics["episode_reward_max"]
    assert result["data_summary"]["environment"] == "CartPole-v1"
    run_id = result["run_id"]
    model_dir = home / "store" / "models" / run_id
    manifest = read_manifest(model_dir)
    assert manifest["format"] == "onnx-policy" and manifest["rllib_algorithm"] == "PPO"
    assert manifest["budget"]["unit"] == "training_iterations" and manifest["iterations"] == 1
    assert manifest["budget"]["description"] == "1 iteration (about 500 env steps at 500 per iteration)"
    assert (model_dir / "checkpoint" / "rllib_checkpoint.json").exists()
    evaluation = json.loads((home / "store" / "evaluations" / run_id / "results.json").read_text())
    assert evaluation["details"]["success_threshold"] == 475.0  # CartPole-v1's reward_threshold
    assert {"training_curve.png", "evaluation_returns.png"} <= set(evaluation["plots"])
    log = Path(result["artifacts"]["log"]).read_text()
    assert "iteration 1: mean return" in log  # progress lines from the train step
    assert_policy_loads_and_acts(model_dir)


# ----------------------------------------------------------------------------- bad input


def test_unknown_environment_is_named():
    with pytest.raises(SpecError) as caught:
        check_environment(rl_spec("ppo", "{training_iterations: 1}", environment="CartPol-v1"))
    assert "'CartPol-v1' is not a registered Gymnasium environment" in str(caught.value)
    assert "Did you mean" in str(caught.value)


def test_dqn_refuses_a_continuous_action_space():
    with pytest.raises(
        SpecError, match="DQN needs a discrete action space, but Pendulum-v1 has a continuous one"
    ):
        check_environment(rl_spec("dqn", "{training_iterations: 1}", environment="Pendulum-v1"))


@pytest.mark.parametrize("budget", ["timesteps: 0", "num_episodes: -5", "training_iterations: 0"])
def test_zero_or_negative_budget_is_rejected(budget):
    with pytest.raises(SpecError, match=r"must be >= 1"):
        rl_spec("ppo", "{" + budget + "}")


def test_one_budget_only_and_the_default_is_said():
    with pytest.raises(SpecError, match="give one training budget, not training_iterations and timesteps"):
        resolve_budget(rl_spec("ppo", "{training_iterations: 2, timesteps: 1000}"))
    default = resolve_budget(rl_spec("ppo", "{}"))
    assert (default.unit, default.value, default.given) == ("timesteps", 100_000, False)
    assert default.describe(4000) == (
        "100000 env steps (about 25 iterations of 4000 steps); the default, as no budget was given"
    )


def test_unreachable_ray_address_fails_fast_through_the_cli(home):
    started = time.monotonic()
    done = cli(
        "run",
        str(EXAMPLES / "ppo.yaml"),
        home=home,
        env={"ISSUEOPS_RAY_ADDRESS": "127.0.0.1:9"},  # discard port: nothing listens
        timeout=120,
    )
    assert done.returncode == 1
    assert "The Ray cluster at 127.0.0.1:9 does not answer" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    assert not (home / "store" / "runs").exists()  # refused before anything ran


def test_a_silent_ray_address_times_out_instead_of_hanging():
    import socket

    # A listener that accepts connections (the kernel does) but never says a word: a hung server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ExternalServiceError, match=f"The Ray cluster at {address} does not answer"):
            probe_ray_address(address, timeout=1.0)
        assert time.monotonic() - started < 5
    with pytest.raises(InvalidInput, match="is not a Ray address"):
        probe_ray_address("ray://:notaport")


def test_more_env_runners_than_cpus_is_refused_not_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("ISSUEOPS_RAY_CPUS", "1")
    spec = rl_spec("ppo", "{training_iterations: 1, num_env_runners: 3}")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"num_env_runners asks for 3 CPU\(s\) but Ray on this machine"):
        train_model(spec, tmp_path / "no-prepared-dir", tmp_path / "m")
    assert time.monotonic() - started < 30


# ------------------------------------------------------------- plain functions, shared Ray


def test_a_live_ray_answers_the_probe(local_ray):
    import ray

    probe_ray_address(ray.get_runtime_context().gcs_address, timeout=5)  # a real GCS: no error


def test_dqn_trains_and_its_policy_acts(local_ray, tmp_path):
    spec = rl_spec(
        "dqn",
        "{training_iterations: 1, learning_starts: 900, hidden_units: [32], evaluation_episodes: 3}",
    )
    trained, result = train_and_evaluate(spec, tmp_path)
    assert trained.manifest["rllib_algorithm"] == "DQN" and trained.manifest["timesteps"] >= 1000
    assert set(result.metrics) >= {"episode_reward_mean", "success_rate", "episode_length_mean"}
    assert result.details["episodes"] == 3 and len(result.details["episode_returns"]) == 3
    assert_policy_loads_and_acts(tmp_path / "m")


def test_a3c_runs_appo_and_says_so(local_ray, tmp_path, caplog):
    spec = rl_spec(
        "a3c",
        "{training_iterations: 1, train_batch_size: 200, hidden_units: [32], evaluation_episodes: 2}",
    )
    with caplog.at_level("INFO", logger="issueops.training.reinforcement"):
        trained, result = train_and_evaluate(spec, tmp_path)
    assert trained.manifest["rllib_algorithm"] == "APPO"
    assert trained.manifest["note"] == A3C_NOTE
    assert result.details["note"] == A3C_NOTE and result.details["rllib_algorithm"] == "APPO"
    assert any("runs APPO" in r.getMessage() for r in caplog.records)
    metadata = json.loads((tmp_path / "p" / "metadata.json").read_text())
    assert metadata["rllib_algorithm"] == "APPO" and metadata["note"] == A3C_NOTE
    assert_policy_loads_and_acts(tmp_path / "m")


def test_impala_trains_one_iteration(local_ray, tmp_path):
    spec = rl_spec(
        "impala",
        "{training_iterations: 1, train_batch_size: 200, hidden_units: [32], evaluation_episodes: 2}",
    )
    trained, result = train_and_evaluate(spec, tmp_path)
    assert trained.manifest["rllib_algorithm"] == "IMPALA" and result.metrics["episode_reward_mean"] > 0
    assert_policy_loads_and_acts(tmp_path / "m")


def test_continuous_actions_are_exported_within_the_bounds(local_ray, tmp_path):
    spec = rl_spec(
        "ppo",
        "{timesteps: 200, train_batch_size: 200, minibatch_size: 100, num_epochs: 1, hidden_units: [16], evaluation_episodes: 1}",
        environment="Pendulum-v1",
        extra="evaluation_threshold: -2000",
    )
    trained, result = train_and_evaluate(spec, tmp_path)
    assert trained.manifest["action_kind"] == "continuous"
    assert trained.manifest["stop_reason"].startswith("budget reached: 200 env steps")
    # Pendulum has no solved threshold: success is counted against the spec's threshold instead.
    assert result.details["success_threshold_source"] == "the spec's evaluation_threshold"
    policy, scores = assert_policy_loads_and_acts(tmp_path / "m", "Pendulum-v1")
    observations = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    actions = policy.act(observations)
    assert actions.shape == (16, 1) and np.all(np.abs(actions) <= 2.0)


def test_progress_is_recorded_per_iteration(local_ray, tmp_path, store):
    spec = rl_spec("ppo", TINY_PPO.replace("training_iterations: 1", "training_iterations: 2"))
    prepare_environment(spec, tmp_path / "p")
    from issueops.pipeline.runs import RunRecord
    from issueops.training.reinforcement.ray import train_reinforcement

    manifest = train_reinforcement(
        spec,
        tmp_path / "p",
        tmp_path / "m",
        run_id="train-progress-test",
        progress=RunRecord(store, "train-progress-test"),  # what train_step hands in
    )
    progress = RunRecord(store, "train-progress-test").read("progress.json")
    assert progress["done"] is True and progress["iteration"] == 2
    assert [row["iteration"] for row in progress["history"]] == [1, 2]
    assert {"episode_return_mean", "timesteps", "elapsed_s"} <= set(progress["history"][0])
    assert progress["history"] == manifest["training_history"]


# ----------------------------------------------------------------------------- KubeRay


def test_rayjob_sample_is_what_the_generator_writes():
    from issueops.pipeline.rayjob import rayjob_manifest, render_rayjob, spec_of

    spec = parse_issue_body((EXAMPLES / "ppo.yaml").read_text())
    generated = rayjob_manifest(spec, "train-20260101-000000-ppo1")
    committed = yaml.safe_load((REPO / "manifests" / "kuberay" / "rayjob.yaml").read_text())
    assert generated == committed
    assert yaml.safe_load(render_rayjob(spec, "train-20260101-000000-ppo1")) == generated
    assert spec_of(generated) == spec


def test_rayjob_is_pinned_bounded_and_cleans_up_after_itself():
    import kubernetes_validate
    import ray

    from issueops.pipeline.rayjob import rayjob_manifest

    manifest = rayjob_manifest(rl_spec("ppo", "{timesteps: 1000, num_env_runners: 3}"), "Train_X-1")
    job = manifest["spec"]
    assert manifest["metadata"]["name"] == "train-x-1"
    assert job["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    templates = [
        job["submitterPodTemplate"],
        job["rayClusterSpec"]["headGroupSpec"]["template"],
        job["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
    ]
    for template in templates:
        for container in template["spec"]["containers"]:
            assert ":" in container["image"] and not container["image"].endswith(":latest")
            assert container["resources"]["requests"] and container["resources"]["limits"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    dqn = rayjob_manifest(rl_spec("dqn", "{training_iterations: 1}"), "run-1")
    assert "workerGroupSpecs" not in dqn["spec"]["rayClusterSpec"]  # DQN samples in the driver


def test_kuberay_rbac_lets_the_train_step_run_rayjobs_and_nothing_more():
    import kubernetes_validate

    kustomization = yaml.safe_load((REPO / "manifests" / "kuberay" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["rbac.yaml"] and kustomization["namespace"] == "issueops"
    role, binding = yaml.safe_load_all((REPO / "manifests" / "kuberay" / "rbac.yaml").read_text())
    for doc in (role, binding):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    assert {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("ray.io", "rayjobs"),
        ("ray.io", "rayjobs/status"),
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]


def test_rayjob_refuses_other_learning_types():
    from issueops.pipeline.rayjob import rayjob_manifest

    spec = parse_issue_body((EXAMPLES / "kmeans.yaml").read_text())
    with pytest.raises(InvalidInput, match="reinforcement"):
        rayjob_manifest(spec, "run-1")


# ------------------------------------------------------- training in a KubeRay RayJob (ISSUEOPS_RL_RUNNER)

RAYJOBS = {"rayjobs": "ray.io/v1"}


class KubeRay:
    """KubeRay's part, on the Kubernetes API double: an applied RayJob runs as its head pod runs it
    (its entrypoint, with its runtimeEnvYAML's variables; a local Ray stands in for the job's own
    cluster), and its status follows: Running, then Complete/SUCCEEDED or Failed/FAILED."""

    def __init__(self):
        self.api = ApiServerDouble(RAYJOBS, on_apply=self.start)
        self.jobs: list[subprocess.CompletedProcess] = []

    def start(self, key, job):
        job["status"] = {"jobDeploymentStatus": "Initializing"}
        threading.Thread(target=self.run, args=(key, job), daemon=True).start()

    def run(self, key, job):
        env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        self.api.set_status(key, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        done = subprocess.run(
            [sys.executable, *job["spec"]["entrypoint"].split()[1:]],
            env={
                **os.environ,
                **env_vars,
                "ISSUEOPS_RAY_ADDRESS": "",
                "ISSUEOPS_RAY_CPUS": "2",
                "PYTHONPATH": str(REPO),
            },
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        self.jobs.append(done)
        if done.returncode == 0:
            self.api.set_status(key, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
        else:
            self.api.set_status(
                key, {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}
            )


def kubeconfig_for(api: ApiServerDouble, path: Path) -> Path:
    """A kubeconfig naming the double, as `kubectl config view --raw` writes one."""
    server = f"http://127.0.0.1:{api.server.server_address[1]}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "issueops", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "issueops"}}],
        "current-context": "double",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_rayjob_runner_trains_in_the_job_and_the_pipeline_gets_the_model(s3_store, tmp_path, monkeypatch):
    """ISSUEOPS_RL_RUNNER=rayjob: the train step applies the run's RayJob, the job trains (its own
    entrypoint, told to train where it is), and the step leaves the job's model in its output."""
    import issueops.pipeline.rayjob
    from issueops.pipeline.rayjob import rayjob_name
    from issueops.pipeline.runs import RunRecord
    from issueops.pipeline.steps import train_step

    spec = rl_spec("ppo", TINY_PPO)
    run_id = "train-20260101-000000-rjob"
    kuberay = KubeRay()
    with kuberay.api:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig_for(kuberay.api, tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("ISSUEOPS_RL_RUNNER", "rayjob")
        monkeypatch.setattr(issueops.pipeline.rayjob, "POLL_S", 0.2)
        manifest = train_step(spec.to_json(), run_id, str(tmp_path / "p"), str(tmp_path / "m"))
    [job] = kuberay.jobs
    assert job.returncode == 0, job.stderr[-2000:]
    assert manifest["rllib_algorithm"] == "PPO" and manifest == read_manifest(tmp_path / "m")
    assert_policy_loads_and_acts(tmp_path / "m")
    applied = kuberay.api.objects[("issueops", rayjob_name(run_id))]
    assert yaml.safe_load(applied["spec"]["runtimeEnvYAML"])["env_vars"]["ISSUEOPS_RL_RUNNER"] == "local"
    assert RunRecord(s3_store, run_id).read("steps/train.json")["status"] == "done"
    assert s3_store.exists(f"models/{run_id}/model.json")
    patches = [r for r in kuberay.api.requests if r["method"] == "PATCH"]
    assert [r["query"] for r in patches] == [{"fieldManager": "issueops", "force": "true"}]


def test_a_failed_rayjob_says_why_and_a_retry_replaces_the_finished_job(s3_store, tmp_path):
    """The job's own step recorded the reason: that is what the pipeline says. Applied again for a
    retry, the finished job is deleted first (applying it would not run it again)."""
    from issueops.errors import IssueOpsError
    from issueops.pipeline.rayjob import train_on_rayjob
    from issueops.pipeline.runs import step_guard

    run_id = "train-20260101-000000-fail"

    def fails(key, job):
        with pytest.raises(ExternalServiceError), step_guard(s3_store, run_id, "train"):
            raise ExternalServiceError("The job's Ray workers were lost twice.")  # a retry may help
        job["status"] = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}

    with ApiServerDouble(RAYJOBS, on_apply=fails) as api:
        for _ in range(2):
            with pytest.raises(IssueOpsError, match="Ray workers were lost twice"):
                train_on_rayjob(
                    rl_spec("ppo", TINY_PPO), run_id, s3_store, tmp_path / "m", api=api.client(), poll_s=0.05
                )
    assert [r["method"] for r in api.requests if r["method"] != "GET"] == ["PATCH", "DELETE", "PATCH"]


def test_rayjob_failures_without_a_record_timeouts_and_refusals_are_sentences(s3_store, tmp_path):
    from issueops.errors import Unauthorized
    from issueops.pipeline.rayjob import rayjob_name, train_on_rayjob
    from issueops.store import LocalStore

    spec = rl_spec("ppo", TINY_PPO)

    def call(api, run_id="train-20260101-000000-err", on=s3_store, **options):
        return train_on_rayjob(spec, run_id, on, tmp_path / "m", api=api.client(), poll_s=0.05, **options)

    def deadline(key, job):
        job["status"] = {"jobDeploymentStatus": "Failed", "jobStatus": "", "reason": "DeadlineExceeded"}

    with ApiServerDouble(RAYJOBS, on_apply=deadline) as api, pytest.raises(ExternalServiceError) as failed:
        call(api)
    assert str(failed.value) == "RayJob issueops/train-20260101-000000-err ended Failed: DeadlineExceeded."

    def empty(key, job):
        job["status"] = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}

    with (
        ApiServerDouble(RAYJOBS, on_apply=empty) as api,
        pytest.raises(ExternalServiceError, match="no model was uploaded"),
    ):
        call(api)

    with ApiServerDouble(RAYJOBS) as api:
        with pytest.raises(ExternalServiceError, match=r"Waited 0 s for RayJob .* to finish; it was deleted"):
            call(api, timeout_s=0.2)
        assert ("issueops", rayjob_name("train-20260101-000000-err")) not in api.objects
    with (
        ApiServerDouble(RAYJOBS, status=403) as api,
        pytest.raises(Unauthorized, match="denied by the double"),
    ):
        call(api)
    with (
        ApiServerDouble({}) as api,
        pytest.raises(NotFound, match=r"no RayJob API \(ray.io/v1\): is KubeRay installed\?"),
    ):
        call(api)
    with ApiServerDouble(RAYJOBS) as api, pytest.raises(InvalidInput, match="needs the object store in S3"):
        call(api, on=LocalStore(tmp_path / "store"))
    assert api.requests == []  # refused before anything was applied


def test_unknown_rl_runner_is_refused(store, tmp_path, monkeypatch):
    from issueops.pipeline.steps import train_step

    monkeypatch.setenv("ISSUEOPS_RL_RUNNER", "slurm")
    with pytest.raises(InvalidInput, match="ISSUEOPS_RL_RUNNER must be local or rayjob, not 'slurm'"):
        train_step(
            rl_spec("ppo", TINY_PPO).to_json(),
            "train-20260101-000000-slrm",
            str(tmp_path / "p"),
            str(tmp_path / "m"),
        )


# -------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_ppo_solves_cartpole(local_ray, tmp_path):
    spec = rl_spec(
        "ppo",
        "{timesteps: 400000, train_batch_size: 4000, num_epochs: 10, minibatch_size: 256, learning_rate: 0.0003}",
        extra="evaluation_threshold: 450",
    )
    trained, result = train_and_evaluate(spec, tmp_path)
    assert trained.manifest["final_training_return_mean"] >= 450
    assert "reached the threshold 450" in trained.manifest["stop_reason"]
    assert result.metrics["episode_reward_mean"] >= 450
