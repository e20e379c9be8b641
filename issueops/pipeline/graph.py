"""The training pipeline: prepare_data → train → evaluate → judge, then a branch per decision
(pass: register → package → [build_tensorrt_engine] → promote → deploy → write_history → notify;
production moves in `promote`, after packaging, so a version that cannot be packaged never serves).

The same function runs on Kubeflow Pipelines (compiled IR YAML) and on the local runner.
"""

from kfp import dsl

from issueops.config import TASK_SETTINGS, Settings
from issueops.pipeline.components import (
    add_gpu_placement,
    build_tensorrt_engine,
    deploy,
    evaluate,
    judge,
    notify,
    package,
    prepare_data,
    promote,
    register,
    rollback,
    train,
    write_history,
)
from issueops.pipeline.policy import STEP_POLICIES, retry_backoff

# On a cluster every task reads issueops' settings from the `issueops-config` ConfigMap and its
# credentials from Secrets, as the operator does (manifests/operator/configmap.yaml,
# manifests/kustomization.yaml): each optional, so a key left out keeps its default. Which keys:
# the Settings fields marked `task` (issueops.config.TASK_SETTINGS).
SETTINGS_CONFIG_MAP = "issueops-config"
TASK_SECRETS = {
    "issueops-s3": {"access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY"},
    "issueops-github": {"token": "GITHUB_TOKEN"},
    "issueops-notify": {
        "slack-webhook-url": "ISSUEOPS_SLACK_WEBHOOK_URL",
        "teams-webhook-url": "ISSUEOPS_TEAMS_WEBHOOK_URL",
        "discord-webhook-url": "ISSUEOPS_DISCORD_WEBHOOK_URL",
        "smtp-password": "ISSUEOPS_SMTP_PASSWORD",
    },
}


def with_policy(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    """The step's retries (policy.py) on the task, its timeout as the pod deadline on a cluster, and the
    settings and credentials every step reads there."""
    from kfp import kubernetes

    policy = STEP_POLICIES[step]
    if policy.retries:
        task.set_retry(num_retries=policy.retries, backoff_duration=retry_backoff(), backoff_factor=2.0)
    kubernetes.set_timeout(task, policy.timeout_s)
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {k: k for k in TASK_SETTINGS}, optional=True)
    for secret, keys in TASK_SECRETS.items():
        kubernetes.use_secret_as_env(task, secret, keys, optional=True)
    task.set_caching_options(False)
    return task


def announce(recorded: dsl.PipelineTask, run_id: str, notification_type: str) -> dsl.PipelineTask:
    """notify after write_history, whether or not the history commit succeeded: a GitHub outage
    must not silence Slack, Teams, Discord and email (the message then says history failed)."""
    task = with_policy(notify(run_id=run_id, notification_type=notification_type), "notify")
    return task.after(recorded).ignore_upstream_failure()


@dsl.pipeline(name="issueops-training", description="Train, evaluate and judge one attempt of a request.")
def training_pipeline(spec_json: str, run_id: str, attempt: int = 1) -> str:
    prepared = with_policy(prepare_data(spec_json=spec_json, run_id=run_id), "prepare_data")
    trained = with_policy(
        train(spec_json=spec_json, run_id=run_id, processed=prepared.outputs["processed"]), "train"
    )
    evaluated = with_policy(
        evaluate(
            spec_json=spec_json,
            run_id=run_id,
            processed=prepared.outputs["processed"],
            model=trained.outputs["model"],
        ),
        "evaluate",
    )
    verdict = with_policy(
        judge(
            spec_json=spec_json, run_id=run_id, evaluation=evaluated.outputs["evaluation"], attempt=attempt
        ),
        "judge",
    )
    decision = verdict.outputs["decision"]
    with dsl.If(decision == "pass", name="passed"):
        registered = with_policy(register(run_id=run_id), "register")
        packaged = with_policy(package(run_id=run_id), "package").after(registered)
        upstream = [packaged]
        if Settings.from_env().tensorrt:  # read at compile time: GPU nodes with TensorRT
            engine = build_tensorrt_engine(run_id=run_id, repository=packaged.outputs["repository"])
            upstream.append(add_gpu_placement(with_policy(engine, "build_tensorrt_engine")))
        promoted = with_policy(promote(run_id=run_id), "promote").after(*upstream)
        deployed = with_policy(
            deploy(run_id=run_id, repository=packaged.outputs["repository"]), "deploy"
        ).after(promoted)
        recorded = with_policy(write_history(run_id=run_id), "write_history").after(deployed)
        announce(recorded, run_id, "training_success")
    with dsl.Elif(decision == "retrain", name="below-threshold"):
        recorded = with_policy(write_history(run_id=run_id), "write_history")
        announce(recorded, run_id, "retrain_required")
    with dsl.Else(name="attempts-exhausted"):
        rolled_back = with_policy(rollback(run_id=run_id), "rollback")
        recorded = with_policy(write_history(run_id=run_id), "write_history").after(rolled_back)
        announce(recorded, run_id, "training_failed")
    return decision
