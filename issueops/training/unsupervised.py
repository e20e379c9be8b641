"""Unsupervised learning: clustering (kmeans, dbscan, autoencoder) and dimensionality reduction
(pca, tsne), each behind the preprocessing fitted in prepare_data.

kmeans, pca and the autoencoder are fitted on the train split and scored on the held-out test
split; they map new rows, so they are saved as servable Pipelines. DBSCAN and t-SNE are
transductive: they label or embed only the rows they were fitted on, so they are fitted on every
row and scored on those same rows, and are saved but not servable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.pipeline import Pipeline

from issueops.data.prepare import SPLITS, PreparedData
from issueops.errors import SpecError
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
AUTOENCODER_STATE = "autoencoder.pt"
# Why a fitted model cannot answer for new rows, as the manifest and the registry tell the user.
NOT_SERVABLE = {
    "dbscan": "DBSCAN labels only the rows it was fitted on; it has no predict for new rows.",
    "tsne": "t-SNE embeds only the rows it was fitted on; it cannot transform new rows.",
}


class AutoencoderClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """A PyTorch autoencoder; k-means on its latent space gives the clusters.

    `transform` returns the latent codes, `predict` the nearest latent centre. Being an sklearn
    estimator, it is saved in one Pipeline with the preprocessing, like every other model.
    """

    def __init__(
        self,
        hidden_units=(64, 32),
        latent_dim=2,
        n_clusters=8,
        epochs=100,
        learning_rate=1e-3,
        batch_size=32,
        random_state=42,
    ):
        self.hidden_units = hidden_units
        self.latent_dim = latent_dim
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, X, y=None, X_val=None):  # noqa: ARG002 - sklearn's signature
        """Adam on the reconstruction error; keeps the epoch with the best validation loss."""
        import torch
        from sklearn.cluster import KMeans
        from torch import nn

        from issueops.training.torch_mlp import build_mlp

        torch.manual_seed(self.random_state)
        generator = torch.Generator().manual_seed(self.random_state)
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        self.n_features_in_ = X.shape[1]
        hidden = list(self.hidden_units)
        self.encoder_ = build_mlp(X.shape[1], hidden, self.latent_dim, 0.0)
        self.decoder_ = build_mlp(self.latent_dim, hidden[::-1], X.shape[1], 0.0)
        params = list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        optimizer = torch.optim.Adam(params, lr=self.learning_rate)
        loss_fn = nn.MSELoss()
        has_val = X_val is not None and len(X_val)
        if has_val:
            X_val = torch.as_tensor(np.asarray(X_val, dtype=np.float32))
        best, best_state = float("inf"), None
        self.loss_curve_, self.val_loss_curve_ = [], []
        for _ in range(self.epochs):
            self.encoder_.train()
            self.decoder_.train()
            order = torch.randperm(len(X), generator=generator)
            total = 0.0
            for start in range(0, len(X), self.batch_size):
                batch = X[order[start : start + self.batch_size]]
                optimizer.zero_grad()
                loss = loss_fn(self.decoder_(self.encoder_(batch)), batch)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            self.loss_curve_.append(total / len(X))
            if has_val:
                with torch.no_grad():
                    val_loss = float(loss_fn(self.decoder_(self.encoder_(X_val)), X_val))
                self.val_loss_curve_.append(val_loss)
                if val_loss < best:
                    best = val_loss
                    best_state = (
                        {k: v.clone() for k, v in self.encoder_.state_dict().items()},
                        {k: v.clone() for k, v in self.decoder_.state_dict().items()},
                    )
        if best_state is not None:
            self.encoder_.load_state_dict(best_state[0])
            self.decoder_.load_state_dict(best_state[1])
        self.encoder_.eval()
        self.decoder_.eval()
        latent = self.transform(X.numpy())
        self.kmeans_ = KMeans(self.n_clusters, n_init=10, random_state=self.random_state).fit(latent)
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.labels_ = self.kmeans_.labels_
        return self

    def transform(self, X) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.encoder_(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()

    def predict(self, X) -> np.ndarray:
        return self.kmeans_.predict(self.transform(X))

    def reconstruction_error(self, X) -> float:
        import torch

        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        with torch.no_grad():
            return float(torch.mean((self.decoder_(self.encoder_(X)) - X) ** 2))

    def to_torch(self):
        """One torch module, preprocessed features → (cluster, latent), for ONNX export."""
        return _latent_cluster_module(self.encoder_, self.cluster_centers_)

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the network without pickle: weights, centres, shape."""
        import torch

        return {
            "encoder": self.encoder_.state_dict(),
            "decoder": self.decoder_.state_dict(),
            "cluster_centers": torch.as_tensor(self.cluster_centers_, dtype=torch.float32),
            "config": {
                "n_features": int(self.n_features_in_),
                "hidden_units": [int(u) for u in self.hidden_units],
                "latent_dim": int(self.latent_dim),
                "n_clusters": int(self.n_clusters),
            },
        }


def _latent_cluster_module(encoder, centers: np.ndarray):
    """encoder + nearest centre as one nn.Module (built lazily: torch loads only when needed)."""
    import torch
    from torch import nn

    class LatentClusters(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.register_buffer("centers", torch.as_tensor(np.asarray(centers), dtype=torch.float32))

        def forward(self, x):
            latent = self.encoder(x)
            return torch.argmin(torch.cdist(latent, self.centers), dim=1), latent

    return LatentClusters()


def make_estimator(spec: TrainingSpec, params: dict[str, Any], n_jobs: int):
    algorithm = spec.algorithm
    if algorithm == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(
            n_clusters=params["n_clusters"],
            init=params["init"],
            n_init=params["n_init"],
            max_iter=params["max_iter"],
            random_state=params["random_state"],
        )
    if algorithm == "dbscan":
        from sklearn.cluster import DBSCAN

        return DBSCAN(eps=params["eps"], min_samples=params["min_samples"], n_jobs=n_jobs)
    if algorithm == "autoencoder":
        return AutoencoderClusterer(
            hidden_units=tuple(params["hidden_units"]),
            latent_dim=params["latent_dim"],
            n_clusters=params["n_clusters"],
            epochs=params["epochs"],
            learning_rate=params["learning_rate"],
            batch_size=params["batch_size"],
            random_state=params["random_state"],
        )
    if algorithm == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=params["num_components"], random_state=params["random_state"])
    if algorithm == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            n_components=params["n_components"],
            perplexity=params["perplexity"],
            learning_rate="auto" if params["learning_rate"] is None else params["learning_rate"],
            max_iter=params["max_iter"],
            init="pca",
            random_state=params["random_state"],
            n_jobs=n_jobs,
        )
    raise ValueError(f"no unsupervised trainer for {algorithm}")


def fit_rows(spec: TrainingSpec, prepared: PreparedData) -> pd.DataFrame:
    """The raw rows a model is fitted on: the train split, or every row for DBSCAN and t-SNE."""
    if spec.algorithm in NOT_SERVABLE:
        return pd.concat([prepared.features(s) for s in SPLITS], ignore_index=True)
    return prepared.features("train")


def train_unsupervised(
    spec: TrainingSpec, prepared: PreparedData, model_dir: Path, n_jobs: int = -1
) -> dict[str, Any]:
    """Fit the spec's algorithm after the saved preprocessing; save it; return manifest fields."""
    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    preprocessor = joblib.load(prepared.preprocessor_path)
    rows = fit_rows(spec, prepared)
    X = np.asarray(preprocessor.transform(rows), dtype=np.float64)
    check_fits_data(spec, params, prepared, n_rows=X.shape[0], n_features=X.shape[1])
    estimator = make_estimator(spec, params, n_jobs)
    if spec.algorithm == "autoencoder":
        X_val = np.asarray(preprocessor.transform(prepared.features("val")), dtype=np.float64)
        estimator.fit(X, X_val=X_val)
    else:
        estimator.fit(X)
    pipeline = Pipeline([("preprocess", preprocessor), ("model", estimator)])
    model_dir = Path(model_dir)
    joblib.dump(pipeline, model_dir / MODEL_FILE)

    info: dict[str, Any] = {
        "format": "sklearn-pipeline",
        "file": MODEL_FILE,
        "hyperparameters": params,
        "feature_columns": prepared.metadata["feature_columns"],
        "feature_kinds": prepared.metadata["feature_kinds"],
        "label_column": prepared.metadata.get("label_column"),
        "fitted_on": "all rows" if spec.algorithm in NOT_SERVABLE else "train split",
        "fitted_rows": int(X.shape[0]),
        "num_features_processed": int(X.shape[1]),
        "output": "cluster" if spec.task_type == "clustering" else "embedding",
        "servable": spec.algorithm not in NOT_SERVABLE,
        "training_metrics": _training_metrics(spec.algorithm, estimator, X),
    }
    if spec.algorithm in NOT_SERVABLE:
        info["servable_reason"] = NOT_SERVABLE[spec.algorithm]
    if spec.algorithm == "autoencoder":
        import torch

        torch.save(estimator.state(), model_dir / AUTOENCODER_STATE)
        info["torch_state"] = AUTOENCODER_STATE
        info["export_note"] = (
            "model.joblib holds the preprocessing and the autoencoder; the step's to_torch() module "
            "maps preprocessed features to (cluster, latent) for ONNX export."
        )
    log.info("%s fitted on %d rows x %d features", spec.algorithm, X.shape[0], X.shape[1])
    return info


def check_fits_data(
    spec: TrainingSpec, params: dict[str, Any], prepared: PreparedData, *, n_rows: int, n_features: int
) -> None:
    """Hyperparameters that cannot work with this data, named with the numbers that rule them out."""
    dataset = prepared.metadata.get("dataset_id") or "the dataset"
    fitted_on = "every row" if spec.algorithm in NOT_SERVABLE else "the train split"
    problems = []
    feature_dim = params.get("feature_dim")
    raw = prepared.metadata.get("num_features")
    if feature_dim is not None and feature_dim not in (n_features, raw):
        problems.append(
            f"feature_dim is {feature_dim} but {dataset} has {raw} feature columns "
            f"({n_features} after preprocessing); set feature_dim to {n_features} or leave it out."
        )
    k = params.get("n_clusters")
    if k is not None and k > n_rows:
        problems.append(
            f"k (n_clusters) = {k} is larger than the {n_rows} rows of {fitted_on} of {dataset}; "
            f"choose k below {n_rows}."
        )
    components = params.get("num_components")
    if spec.algorithm == "pca" and components > min(n_rows, n_features):
        problems.append(
            f"num_components = {components} is more than {dataset} allows: {n_features} features "
            f"(after preprocessing) and {n_rows} rows; choose at most {min(n_rows, n_features)}."
        )
    if spec.algorithm == "tsne" and params["perplexity"] >= n_rows:
        problems.append(
            f"t-SNE perplexity {params['perplexity']:g} must be less than the number of rows "
            f"({n_rows}) of {dataset}; choose a perplexity below {n_rows} (5 to 50 is usual)."
        )
    if spec.algorithm == "autoencoder" and params["latent_dim"] > n_features:
        problems.append(
            f"latent_dim = {params['latent_dim']} is larger than the {n_features} input features; "
            "an autoencoder's latent space should be smaller than its input."
        )
    if problems:
        raise SpecError(problems[0], problems=problems)


def _training_metrics(algorithm: str, estimator, X: np.ndarray) -> dict[str, Any]:
    if algorithm == "kmeans":
        return {"train_inertia": round(float(estimator.inertia_), 6), "n_iter": int(estimator.n_iter_)}
    if algorithm == "dbscan":
        labels = estimator.labels_
        return {
            "clusters_found": int(len(set(labels.tolist()) - {-1})),
            "noise_fraction": round(float(np.mean(labels == -1)), 6),
        }
    if algorithm == "autoencoder":
        result = {
            "train_reconstruction_mse": round(estimator.reconstruction_error(X), 6),
            "epochs": len(estimator.loss_curve_),
            "latent_inertia": round(float(estimator.kmeans_.inertia_), 6),
        }
        if estimator.val_loss_curve_:
            result["best_val_reconstruction_mse"] = round(min(estimator.val_loss_curve_), 6)
        return result
    if algorithm == "pca":
        return {
            "explained_variance_ratio": [round(float(v), 6) for v in estimator.explained_variance_ratio_],
        }
    if algorithm == "tsne":
        return {"kl_divergence": round(float(estimator.kl_divergence_), 6), "n_iter": int(estimator.n_iter_)}
    return {}
