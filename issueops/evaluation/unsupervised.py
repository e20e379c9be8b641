"""Evaluation of an unsupervised model: clustering scores (silhouette, Davies-Bouldin, agreement with
known labels) and dimensionality-reduction scores (trustworthiness, explained variance), with plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from issueops.data.prepare import SPLITS, PreparedData
from issueops.evaluation.plots import pyplot, save
from issueops.spec.body import TrainingSpec
from issueops.training.train import read_manifest
from issueops.training.unsupervised import NOT_SERVABLE

# Pairwise metrics are quadratic in rows: above these sizes they are computed on a seeded sample.
MAX_SILHOUETTE_ROWS = 5000
MAX_TRUSTWORTHINESS_ROWS = 2000


# ---------------------------------------------------------------------------------- evaluation


def evaluate_unsupervised(
    spec: TrainingSpec, prepared: PreparedData, model_dir: Path, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Metrics, details and plots: held-out test split, or every row for DBSCAN and t-SNE."""
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
    plt = pyplot()
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
    return save(fig, path)


def _plot_explained_variance(model, X_train: np.ndarray, out_dir: Path) -> str:
    """Per-component and cumulative explained variance over every component of the train split."""
    from sklearn.decomposition import PCA

    full = PCA(random_state=0).fit(X_train)
    ratios = full.explained_variance_ratio_
    plt = pyplot()
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
    return save(fig, out_dir / "explained_variance.png")
