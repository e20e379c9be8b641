"""Unsupervised learning: clustering (kmeans, dbscan, autoencoder) and dimensionality reduction
(pca, tsne), each behind the preprocessing fitted in prepare_data.

kmeans, pca and the autoencoder are fitted on the train split and scored on the held-out test
split; they map new rows, so they are saved as servable Pipelines. DBSCAN and t-SNE are
transductive: they label or embed only the rows they were fitted on, so they are fitted on every
row and scored on those same rows, and are saved but not servable.
"""

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
# Pairwise metrics are quadratic in rows: above these sizes they are computed on a seeded sample.
MAX_SILHOUETTE_ROWS = 5000
MAX_TRUSTWORTHINESS_ROWS = 2000


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


# ---------------------------------------------------------------------------------- evaluation


def evaluate_unsupervised(
    spec: TrainingSpec, prepared: PreparedData, model_dir: Path, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Metrics, details and plots: held-out test split, or every row for DBSCAN and t-SNE."""
    from issueops.training.train import read_manifest

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = read_manifest(model_dir)
    pipeline = joblib.load(model_dir / manifest["file"])
    preprocess, model = pipeline.named_steps["preprocess"], pipeline.named_steps["model"]
    transductive = spec.algorithm in NOT_SERVABLE
    splits = SPLITS if transductive else ("test",)
    X = np.asarray(
        preprocess.transform(pd.concat([prepared.features(s) for s in splits], ignore_index=True)),
        dtype=np.float64,
    )
    known = _known_labels(prepared, splits)
    details: dict[str, Any] = {
        "scored_on": "all rows (the rows it was fitted on)" if transductive else "test split",
        "n_scored": int(len(X)),
        "not_computed": {},
    }
    if transductive:
        details["note"] = NOT_SERVABLE[spec.algorithm]
    seed = spec.seed
    if spec.task_type == "clustering":
        metrics, plots = _evaluate_clustering(spec.algorithm, model, X, known, details, out_dir, seed)
    else:
        metrics, plots = _evaluate_reduction(
            spec.algorithm, model, X, known, details, out_dir, seed, prepared
        )
    if not details["not_computed"]:
        del details["not_computed"]
    return {k: round(float(v), 6) for k, v in metrics.items()}, details, plots


def _known_labels(prepared: PreparedData, splits) -> np.ndarray | None:
    """The dataset's own labels (kept out of training) for external scores and plot colours."""
    column = prepared.metadata.get("label_column")
    if not column:
        return None
    return pd.concat([prepared.table(s)[column] for s in splits], ignore_index=True).astype(str).to_numpy()


def _evaluate_clustering(algorithm, model, X, known, details, out_dir: Path, seed: int):
    from sklearn import metrics as skm

    metrics: dict[str, float] = {}
    if algorithm == "dbscan":
        labels = model.labels_
        metrics["noise_fraction"] = float(np.mean(labels == -1))
    else:
        labels = model.predict(X)
    if algorithm == "kmeans":
        metrics["inertia"] = float(-model.score(X))
    clustered = labels != -1
    found = sorted(set(labels[clustered].tolist()))
    details["clusters_found"] = len(found)
    details["cluster_sizes"] = {str(c): int(np.sum(labels == c)) for c in found}
    if algorithm == "dbscan":
        details["noise_points"] = int(np.sum(~clustered))
    Xc, lc = X[clustered], labels[clustered]
    if 2 <= len(found) <= len(Xc) - 1:
        sample = min(len(Xc), MAX_SILHOUETTE_ROWS)
        metrics["silhouette"] = float(
            skm.silhouette_score(Xc, lc, sample_size=sample if sample < len(Xc) else None, random_state=seed)
        )
        metrics["davies_bouldin"] = float(skm.davies_bouldin_score(Xc, lc))
        metrics["calinski_harabasz"] = float(skm.calinski_harabasz_score(Xc, lc))
        if algorithm == "dbscan":
            details["scores_exclude_noise"] = True
    else:
        reason = (
            f"{len(found)} cluster(s) among {len(Xc)} scored points; silhouette, Davies-Bouldin and "
            "Calinski-Harabasz need at least 2 clusters and fewer clusters than points"
        )
        for name in ("silhouette", "davies_bouldin", "calinski_harabasz"):
            details["not_computed"][name] = reason
    if known is not None:
        details["external"] = {
            "against": "the dataset's own labels, kept out of training",
            "adjusted_rand_index": round(float(skm.adjusted_rand_score(known, labels)), 6),
            "normalized_mutual_info": round(float(skm.normalized_mutual_info_score(known, labels)), 6),
        }
    if algorithm == "autoencoder":
        latent = model.transform(X)
        details["latent_dim"] = int(latent.shape[1])
        details["test_reconstruction_mse"] = round(model.reconstruction_error(X), 6)
        if 2 <= len(found) <= len(X) - 1:
            details["latent_silhouette"] = round(float(skm.silhouette_score(latent, labels)), 6)
        points, axes = _two_dimensions(latent, "latent")
        title = "Autoencoder latent space, coloured by cluster"
    else:
        points, axes = _two_dimensions(X, "PCA")
        title = f"{algorithm} clusters on a 2-D PCA projection"
    plots = [_plot_projection(points, axes, labels, title, out_dir / "cluster_projection.png", noise=True)]
    return metrics, plots


def _evaluate_reduction(algorithm, model, X, known, details, out_dir: Path, seed: int, prepared):
    from sklearn import metrics as skm
    from sklearn.manifold import trustworthiness

    metrics: dict[str, float] = {}
    if algorithm == "pca":
        embedding = model.transform(X)
        metrics["explained_variance_ratio"] = float(np.sum(model.explained_variance_ratio_))
        details["explained_variance_ratio_per_component"] = [
            round(float(v), 6) for v in model.explained_variance_ratio_
        ]
        residual = X - model.inverse_transform(embedding)
        total = float(np.sum((X - model.mean_) ** 2)) or 1.0
        details["test_explained_variance"] = round(1 - float(np.sum(residual**2)) / total, 6)
    else:
        embedding = model.embedding_
        details["kl_divergence"] = round(float(model.kl_divergence_), 6)
    rows = np.random.default_rng(seed).permutation(len(X))[:MAX_TRUSTWORTHINESS_ROWS]
    neighbours = min(5, (len(rows) - 1) // 2)
    if neighbours >= 1:
        metrics["trustworthiness"] = float(trustworthiness(X[rows], embedding[rows], n_neighbors=neighbours))
        details["trustworthiness_neighbours"] = neighbours
    else:
        details["not_computed"]["trustworthiness"] = f"{len(X)} rows are too few for a neighbourhood"
    groups = len(set(known.tolist())) if known is not None else 0
    if known is not None and 2 <= groups <= len(X) - 1:
        metrics["silhouette"] = float(skm.silhouette_score(embedding, known, random_state=seed))
        details["silhouette_of"] = "the embedding, grouped by the dataset's own labels"
    else:
        details["not_computed"]["silhouette"] = (
            "the dataset has no known labels to group the embedding by"
            if known is None
            else f"the known labels form {groups} group(s)"
        )
    points, axes = _two_dimensions(embedding, "component")
    colours = known if known is not None else np.zeros(len(embedding), dtype=int)
    title = f"{algorithm} embedding" + (", coloured by known label" if known is not None else "")
    plots = [_plot_projection(points, axes, colours, title, out_dir / "projection.png", noise=False)]
    if algorithm == "pca":
        X_train = joblib.load(prepared.preprocessor_path).transform(prepared.features("train"))
        plots.append(_plot_explained_variance(model, np.asarray(X_train, dtype=np.float64), out_dir))
    return metrics, plots


def _two_dimensions(data: np.ndarray, name: str) -> tuple[np.ndarray, tuple[str, str]]:
    """The first two axes of `data`, via PCA when it has more, padded with zeros when it has one."""
    if data.shape[1] > 2:
        from sklearn.decomposition import PCA

        reducer = PCA(n_components=2, random_state=0).fit(data)
        share = reducer.explained_variance_ratio_
        return reducer.transform(data), (
            f"{name} PC 1 ({share[0]:.0%} of variance)",
            f"{name} PC 2 ({share[1]:.0%} of variance)",
        )
    if data.shape[1] == 1:
        return np.column_stack([data[:, 0], np.zeros(len(data))]), (f"{name} 1", "")
    return data, (f"{name} 1", f"{name} 2")


def _plot_projection(points, axes, colours, title: str, path: Path, *, noise: bool) -> str:
    from issueops.evaluation.supervised import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    values = np.asarray(colours)
    groups = sorted(set(values.tolist()), key=str)
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for index, group in enumerate(groups):
        mask = values == group
        is_noise = noise and group == -1
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=12,
            color="lightgrey" if is_noise else cmap(index % cmap.N),
            label="noise" if is_noise else str(group),
        )
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    if 1 < len(groups) <= 20:
        ax.legend(fontsize="small", markerscale=1.5, loc="best")
    return _save(fig, path)


def _plot_explained_variance(model, X_train: np.ndarray, out_dir: Path) -> str:
    """Per-component and cumulative explained variance over every component of the train split."""
    from sklearn.decomposition import PCA

    from issueops.evaluation.supervised import _pyplot, _save

    full = PCA(random_state=0).fit(X_train)
    ratios = full.explained_variance_ratio_
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(ratios) + 1)
    ax.bar(steps, ratios, color="tab:blue", alpha=0.6, label="per component")
    ax.plot(steps, np.cumsum(ratios), marker="o", color="tab:orange", label="cumulative")
    ax.axvline(model.n_components_, linestyle="--", color="grey", label=f"kept: {model.n_components_}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_title("Explained variance (train split)")
    ax.legend(fontsize="small", loc="center right")
    return _save(fig, out_dir / "explained_variance.png")
