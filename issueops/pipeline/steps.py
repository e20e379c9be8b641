"""The pipeline's steps as plain functions: what each KFP component calls, in one line.

Each step reads its settings from the environment, records itself in runs/<run_id>/ and
mirrors its output directory into the object store's layout (store.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from issueops.config import Settings, actor, utcnow
from issueops.errors import InvalidInput, NotFound
from issueops.pipeline.runs import RunRecord, step_guard
from issueops.spec.body import TrainingSpec
from issueops.store import ObjectStore, open_store

if TYPE_CHECKING:  # each step imports only what it uses: every import is paid again per task process
    from issueops.evaluation.judge import Judgement
    from issueops.evaluation.supervised import EvaluationResult


PIPELINE_ACTOR = "issueops-pipeline"  # who the audit trail names for a step, unless ISSUEOPS_ACTOR says


def _context() -> tuple[Settings, ObjectStore]:
    settings = Settings.from_env()
    return settings, open_store(settings)


def prepare_data_step(spec_json: str, run_id: str, out_dir: str) -> dict:
    settings, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "prepare_data"):
        if spec.learning_type == "reinforcement":
            from issueops.training.reinforcement.environment import prepare_environment

            metadata = prepare_environment(spec, Path(out_dir))
        else:
            from issueops.data.prepare import prepare_data

            metadata = prepare_data(spec, settings, store, Path(out_dir)).metadata
        store.upload_dir(Path(out_dir), f"processed/{run_id}")
    return metadata


def train_step(spec_json: str, run_id: str, processed_dir: str, model_dir: str) -> dict:
    """Train here, or (reinforcement learning with ISSUEOPS_RL_RUNNER=rayjob) in a KubeRay RayJob
    that runs this same step on its own Ray cluster and uploads the model; either way the model
    ends up in `model_dir` and in the store under models/<run_id>."""
    settings, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "train"):
        runner = settings.rl_runner
        if runner not in ("local", "rayjob"):
            raise InvalidInput(f"ISSUEOPS_RL_RUNNER must be local or rayjob, not {runner!r}.")
        if spec.learning_type == "reinforcement" and runner == "rayjob":
            from issueops.pipeline.rayjob import train_on_rayjob

            return train_on_rayjob(spec, run_id, store, Path(model_dir))
        from issueops.training.train import train_model

        trained = train_model(
            spec, Path(processed_dir), Path(model_dir), run_id=run_id, progress=RunRecord(store, run_id)
        )
        store.upload_dir(Path(model_dir), f"models/{run_id}")
    return trained.manifest


def evaluate_step(
    spec_json: str, run_id: str, processed_dir: str, model_dir: str, out_dir: str
) -> EvaluationResult:
    from issueops.evaluation.supervised import evaluate_model

    _, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "evaluate"):
        result = evaluate_model(spec, Path(processed_dir), Path(model_dir), Path(out_dir))
        store.upload_dir(Path(out_dir), f"evaluations/{run_id}")
    return result


def judge_step(spec_json: str, run_id: str, evaluation_dir: str, attempt: int) -> Judgement:
    """The decision; when a version is in production, it is first scored on this attempt's data."""
    import json

    from issueops.evaluation.judge import judge

    settings, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "judge"):
        evaluation = json.loads((Path(evaluation_dir) / "results.json").read_text())
        champion = _champion(spec, run_id, settings, store) if evaluation["value"] is not None else None
        verdict = judge(
            spec.evaluation_metric,
            evaluation["value"],
            spec.evaluation_threshold,
            attempt=attempt,
            max_retry=spec.max_retry,
            champion=champion,
            max_regression=spec.max_regression,
        )
        RunRecord(store, run_id).write("judgement.json", {**verdict.to_dict(), "time": utcnow().isoformat()})
    return verdict


def _champion(spec: TrainingSpec, run_id: str, settings: Settings, store: ObjectStore):
    """Production's version of the spec's model scored on this run's test split (or episodes)."""
    from issueops.evaluation.supervised import score_champion
    from issueops.registry.lifecycle import Registry
    from issueops.registry.names import model_name_for

    prepared = _local_copy(store, f"processed/{run_id}", settings)
    registry = Registry.from_settings(settings)
    return score_champion(spec, prepared, registry, model_name_for(spec.to_dict()), run_id=run_id)


def _github(settings: Settings):
    from issueops.github import configured_client

    return configured_client(settings)


def register_step(run_id: str) -> dict:
    """Log the attempt to MLflow and register a new version; auto-approve unless manual approval."""
    from issueops.pipeline.runs import collect_result
    from issueops.registry.lifecycle import Registry
    from issueops.registry.names import model_name_for

    settings, store = _context()
    with step_guard(store, run_id, "register"):
        result = collect_result(store, run_id)
        registry = Registry.from_settings(settings)
        model_dir = _local_copy(store, f"models/{run_id}", settings)
        mlflow_run_id = registry.log_run(result, model_dir)
        spec = result.spec
        auto_approve = not (spec.get("manual_approval") or settings.manual_approval)
        # Registered as pending: production moves only once the version is packaged (promote_step),
        # so a version that fails its ONNX parity check never becomes production. Should the run's
        # process die before then, the registry rejects the version instead of leaving it pending.
        info = registry.register_version(
            model_name_for(spec),
            result,
            mlflow_run_id,
            model_dir,
            approve=False,
            actor=actor(PIPELINE_ACTOR),
            approver=RunRecord(store, run_id).owner() if auto_approve else None,
        )
        registration = {
            "model_name": info.model,
            "version": str(info.version),
            "alias": "production" if "production" in (info.aliases or []) else None,
            "approval_status": info.status,
            "mlflow_run_id": mlflow_run_id,
            "auto_approve": auto_approve,
        }
        RunRecord(store, run_id).write("registration.json", registration)
    return registration


def promote_registered(run_id: str, settings: Settings, store: ObjectStore) -> dict:
    """Approve the run's version into production when auto-approval applies (with
    ISSUEOPS_SERVING=kserve its InferenceService is promoted too); returns the registration."""
    from issueops.registry.promotion import Production

    record = RunRecord(store, run_id)
    registration = record.read("registration.json") or {}
    if registration.get("auto_approve") and registration.get("alias") != "production":
        done = Production(settings, store=store).promote(
            registration["model_name"],
            registration["version"],
            actor=actor(PIPELINE_ACTOR),
            reason="auto-approved: the run passed evaluation and packaging",
        )
        info = done.version
        registration.update(
            alias="production" if "production" in (info.aliases or []) else None,
            approval_status=info.status,
            endpoint=done.endpoint,
        )
        record.write("registration.json", registration)
    return registration


def promote_step(run_id: str) -> dict:
    """Where production moves: the version this run registered, now packaged, becomes production
    when auto-approval applies (neither the spec's manual_approval nor ISSUEOPS_MANUAL_APPROVAL);
    otherwise it stays pending until /approve. Runs after package (and the TensorRT build), so a
    version that fails its ONNX parity check never becomes production; before deploy, which serves
    what this step decided."""
    settings, store = _context()
    with step_guard(store, run_id, "promote"):
        return promote_registered(run_id, settings, store)


def rollback_step(run_id: str) -> dict:
    """A failed request leaves production (and with ISSUEOPS_SERVING=kserve its endpoint) as it was
    before the request."""
    from issueops.pipeline.runs import collect_result
    from issueops.registry.names import model_name_for
    from issueops.registry.promotion import Production

    settings, store = _context()
    with step_guard(store, run_id, "rollback"):
        result = collect_result(store, run_id)
        outcome = Production(settings, store=store).roll_back_request(
            model_name_for(result.spec), run_id, reason=result.message, actor=actor(PIPELINE_ACTOR)
        )
        record = outcome.to_dict()
        RunRecord(store, run_id).write("rollback.json", record)
    return record


def package_step(run_id: str, repo: str | None = None) -> dict[str, Any]:
    """Package the version this run registered; a model that cannot predict is recorded, not failed.

    repo: where to write the local Triton repository (a KFP Model artifact's path), default
    $ISSUEOPS_HOME/triton.
    """
    from issueops.packaging.onnx_parity import NotServable
    from issueops.packaging.package import package_model

    settings, store = _context()
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "package"):
        registration = record.read("registration.json")
        if not registration:
            raise NotFound(f"Run {run_id} registered no model version, so there is nothing to package.")
        try:
            result = package_model(
                registration["model_name"],
                registration["version"],
                repo=Path(repo) if repo else None,
                settings=settings,
                store=store,
            ).to_dict()
        except NotServable as exc:
            result = {
                "model": registration["model_name"],
                "version": int(registration["version"]),
                "servable": False,
                "reason": str(exc),
            }
            record.write("serving.json", {"endpoint": None, **result})
        else:
            result["reference_profile"] = _save_reference_profile(store, run_id, result)
        record.write("package.json", result)
    return result


def _save_reference_profile(store: ObjectStore, run_id: str, package: dict[str, Any]) -> dict[str, str]:
    """The packaged version's reference profile, saved with it, so drift checks never need the
    training data; a profile that cannot be made is recorded, not failed: the version serves."""
    import logging

    from issueops.errors import IssueOpsError
    from issueops.monitoring.profile import save_run_profile
    from issueops.packaging.triton import ONNX_FILE

    columns = package.get("export", {}).get("feature_columns") or {}
    if not columns:  # a policy: it is served observations, not the columns of a table
        return {"skipped": "the model takes no table's columns"}
    onnx_path = Path(package["repository"]) / str(package["version"]) / ONNX_FILE
    try:
        return {
            "uri": save_run_profile(store, run_id, package["model"], package["version"], onnx_path, columns)
        }
    except (IssueOpsError, OSError, ValueError, KeyError, RuntimeError) as error:
        logging.getLogger(__name__).warning("no reference profile for run %s: %s", run_id, error)
        return {"error": f"{type(error).__name__}: {error}"}


def tensorrt_step(run_id: str, out_dir: str | None = None) -> dict[str, Any]:
    """Build a TensorRT plan for the packaged version on this (GPU) node.

    A graph TensorRT cannot run, or a machine without TensorRT, is recorded as skipped (GPU
    nodes then serve the ONNX model through ONNX Runtime's TensorRT accelerator); an engine that
    disagrees with ONNX Runtime is recorded as rejected. Neither fails the run.
    """
    from issueops.errors import Unavailable
    from issueops.packaging.tensorrt import EngineCheckError, build_for_package

    settings, store = _context()
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "build_tensorrt_engine"):
        package = record.read("package.json") or {}
        if package.get("servable") is False or not package:
            outcome = {"status": "skipped", "reason": "nothing was packaged"}
        else:
            plan_dir = Path(out_dir) if out_dir else settings.home / "tensorrt" / run_id
            try:
                engine = build_for_package(store, package["model"], int(package["version"]), plan_dir)
                outcome = {"status": "built", **engine.to_dict()}
            except Unavailable as exc:
                outcome = {"status": "skipped", "reason": str(exc)}
            except EngineCheckError as exc:
                outcome = {"status": "rejected", "reason": str(exc)}
        outcome["time"] = utcnow().isoformat()
        record.write("tensorrt.json", outcome)
    return outcome


def deploy_step(run_id: str) -> dict[str, Any]:
    """Make the packaged version reachable and record the endpoint in runs/<run_id>/serving.json.

    Production has moved (or not) in promote_step before this: ISSUEOPS_SERVING=kserve applies an
    InferenceService (primary when the version is production, a canary while it awaits /approve);
    the default, local, relies on `issueops serve`, which follows the production alias by itself.
    """
    settings, store = _context()
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "deploy"):
        package = record.read("package.json") or {}
        registration = record.read("registration.json") or {}  # as promote left it
        if package.get("servable") is False:
            return record.read("serving.json") or {}
        if not package:
            raise NotFound(f"Run {run_id} has no package; the package step must run first.")
        model, version = package["model"], int(package["version"])
        approved = registration.get("alias") == "production"
        mode = settings.serving
        if mode == "kserve":
            from issueops.serving.kserve import deploy_version

            serving = deploy_version(model, version, store=store, approved=approved).to_dict()
        else:
            http = settings.serve_url
            serving = {
                "mode": "local",
                "endpoint": f"{http}/v2/models/{model}",
                "grpc": settings.serve_grpc,
                "model": model,
                "version": version,
                "served_version": version if approved else _production_version(settings, model),
                "note": "`issueops serve` serves the production version and follows it without a restart.",
            }
        serving["time"] = utcnow().isoformat()
        record.write("serving.json", serving)
    return serving


def _production_version(settings: Settings, model: str) -> int | None:
    from issueops.registry.lifecycle import Registry

    info = Registry.from_settings(settings).production(model)
    return info.version if info else None


def write_history_step(run_id: str) -> dict:
    """The run's markdown (and plots) committed to the history repository."""
    from issueops.pipeline.runs import collect_result
    from issueops.reporting.history import write_history

    settings, store = _context()
    with step_guard(store, run_id, "write_history"):
        result = collect_result(store, run_id)
        plots_dir = _local_copy(store, f"evaluations/{run_id}", settings)
        result.artifacts.update({p.name: str(p) for p in plots_dir.glob("*.png")})
        record = write_history(result, settings=settings, github=_github(settings)).to_dict()
        RunRecord(store, run_id).write("history.json", record)
    return record


def notify_step(run_id: str, notification_type: str) -> dict:
    """Announce the run on every configured channel; a channel's failure is reported, never raised."""
    from issueops.pipeline.runs import collect_result
    from issueops.reporting.notify.channels import channels_from_env
    from issueops.reporting.notify.dispatch import notify
    from issueops.reporting.notify.messages import Notification

    settings, store = _context()
    with step_guard(store, run_id, "notify"):
        result = collect_result(store, run_id)
        # The question to the operator on retrain is posted by the request's driver (bridge or
        # operator), which also waits for the answer; here only the other channels hear of it.
        wants_comment = result.issue is not None and notification_type != "retrain_required"
        github = _github(settings) if wants_comment else None
        post = (lambda issue, body: github.post_comment(issue, body)[1]) if github else None
        rollback = RunRecord(store, run_id).read("rollback.json")
        if rollback:  # say which version production is on now, or that there is none
            from issueops.results import after_rollback

            result.message = f"{result.message} {after_rollback(rollback)}".strip()
        report = notify(
            Notification.from_result(result, notification_type), channels_from_env(post_comment=post)
        )
        RunRecord(store, run_id).write(f"notify-{notification_type}.json", report.to_dict())
    return report.to_dict()


def _local_copy(store: ObjectStore, prefix: str, settings: Settings) -> Path:
    """A local directory holding the store's `prefix` (the store's own path when it is local)."""
    import tempfile

    from issueops.store import LocalStore, download_dir

    if isinstance(store, LocalStore):
        return store.root / prefix
    target = Path(tempfile.mkdtemp(prefix="issueops-", dir=settings.home if settings.home.exists() else None))
    return download_dir(store, prefix, target)
