"""train: dispatch on learning type; the model and everything needed to use it go in one directory.

`model.json` in that directory says what the model is (format, algorithm, task, features,
classes, hyperparameters); `load_model` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from issueops.config import Settings
from issueops.data.prepare import PreparedData
from issueops.spec.body import TrainingSpec

MANIFEST = "model.json"


@dataclass
class TrainedModel:
    directory: Path
    manifest: dict[str, Any]


def train_model(
    spec: TrainingSpec, prepared_dir: Path, model_dir: Path, *, run_id: str = "", progress=None
) -> TrainedModel:
    """Train `spec` on the prepared data and save it (with its preprocessing) under model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = Settings.from_env().cpus or -1
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "algorithm": spec.algorithm,
        "learning_type": spec.learning_type,
        "task_type": spec.task_type,
        "spec": spec.to_dict(),
        "servable": spec.algo.servable,
    }
    if spec.learning_type == "supervised":
        import joblib

        from issueops.training.supervised import train_supervised

        prepared = PreparedData.open(prepared_dir)
        pipeline, info = train_supervised(spec, prepared, n_jobs=n_jobs)
        joblib.dump(pipeline, model_dir / "model.joblib")
        manifest.update(info)
        manifest.update(
            format="sklearn-pipeline",
            file="model.joblib",
            target=prepared.metadata["target"],
            feature_columns=prepared.metadata["feature_columns"],
            feature_kinds=prepared.metadata["feature_kinds"],
            classes=prepared.metadata.get("classes"),
        )
    elif spec.learning_type == "unsupervised":
        from issueops.training.unsupervised import train_unsupervised

        manifest.update(train_unsupervised(spec, PreparedData.open(prepared_dir), model_dir, n_jobs=n_jobs))
    else:
        from issueops.training.reinforcement.ray import train_reinforcement

        manifest.update(
            train_reinforcement(spec, Path(prepared_dir), model_dir, run_id=run_id, progress=progress)
        )
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return TrainedModel(model_dir, manifest)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / MANIFEST).read_text())


def load_model(model_dir: Path):
    """The fitted model object saved by train_model (an sklearn Pipeline for tabular models)."""
    import joblib

    manifest = read_manifest(model_dir)
    return joblib.load(Path(model_dir) / manifest["file"])
