"""The pipeline's steps as plain functions: what each KFP component calls, in one line.

Each step reads its settings from the environment, records itself in runs/<run_id>/ and
mirrors its output directory into the seed's layout in the object store.
"""

from __future__ import annotations

from pathlib import Path

from issueops.config import Settings
from issueops.evaluate import EvaluationResult, evaluate_model
from issueops.judge import Judgement, judge
from issueops.runs import RunRecord, step_guard, utcnow
from issueops.spec import TrainingSpec
from issueops.store import ObjectStore, open_store


def _context() -> tuple[Settings, ObjectStore]:
    settings = Settings.from_env()
    return settings, open_store(settings)


def prepare_data_step(spec_json: str, run_id: str, out_dir: str) -> dict:
    settings, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "prepare_data"):
        if spec.learning_type == "reinforcement":
            from issueops.training.reinforcement import prepare_environment

            metadata = prepare_environment(spec, Path(out_dir))
        else:
            from issueops.prepare import prepare_data

            metadata = prepare_data(spec, settings, store, Path(out_dir)).metadata
        store.upload_dir(Path(out_dir), f"processed/{run_id}")
    return metadata


def train_step(spec_json: str, run_id: str, processed_dir: str, model_dir: str) -> dict:
    _, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "train"):
        from issueops.training import train_model

        trained = train_model(spec, Path(processed_dir), Path(model_dir), run_id=run_id)
        store.upload_dir(Path(model_dir), f"models/{run_id}")
    return trained.manifest


def evaluate_step(spec_json: str, run_id: str, processed_dir: str, model_dir: str, out_dir: str) -> EvaluationResult:
    _, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "evaluate"):
        result = evaluate_model(spec, Path(processed_dir), Path(model_dir), Path(out_dir))
        store.upload_dir(Path(out_dir), f"evaluations/{run_id}")
    return result


def judge_step(spec_json: str, run_id: str, evaluation_dir: str, attempt: int) -> Judgement:
    _, store = _context()
    spec = TrainingSpec.from_json(spec_json)
    with step_guard(store, run_id, "judge"):
        evaluation = EvaluationResult.read(Path(evaluation_dir))
        verdict = judge(
            spec.evaluation_metric,
            evaluation.value,
            spec.evaluation_threshold,
            attempt=attempt,
            max_retry=spec.max_retry,
        )
        RunRecord(store, run_id).write("judgement.json", {**verdict.to_dict(), "time": utcnow()})
    return verdict
