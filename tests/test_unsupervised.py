"""Unsupervised learning: clustering and dimensionality reduction, through the real pipeline
(the CLI on KFP's local runner) for kmeans and pca, and as plain functions for the rest."""

import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest

from issueops.data.prepare import prepare_data
from issueops.errors import SpecError
from issueops.evaluation.judge import judge
from issueops.evaluation.supervised import evaluate_model
from issueops.spec.body import parse_issue_body
from issueops.training.train import load_model, read_manifest, train_model
from tests.conftest import EXAMPLES, REPO

CLUSTER_METRICS = {"silhouette", "davies_bouldin", "calinski_harabasz"}


def cli_run(example, home):
    env = {**os.environ, "ISSUEOPS_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "issueops.cli", "run", str(example), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def run_steps(settings, store, tmp_path, body):
    spec = parse_issue_body(body)
    prepared = prepare_data(spec, settings, store, tmp_path / "p")
    trained = train_model(spec, tmp_path / "p", tmp_path / "m")
    return spec, prepared, trained, evaluate_model(spec, tmp_path / "p", tmp_path / "m", tmp_path / "e")


def assert_png(path):
    assert path.read_bytes()[:4] == b"\x89PNG", path


def test_kmeans_example_runs_the_pipeline_and_keeps_a_servable_model(home):
    done = cli_run(EXAMPLES / "kmeans.yaml", home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "pass" and result["evaluation_metric"] == "silhouette"
    assert CLUSTER_METRICS | {"inertia"} <= set(result["metrics"])
    assert result["spec"]["hyperparameters"]["n_clusters"] == 3  # given as the seed's `k`
    run_id = result["run_id"]
    store = home / "store"
    assert_png(store / "evaluations" / run_id / "cluster_projection.png")
    manifest = read_manifest(store / "models" / run_id)
    assert manifest["servable"] is True and manifest["format"] == "sklearn-pipeline"
    assert manifest["feature_columns"] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    model = load_model(store / "models" / run_id)
    raw = pd.read_parquet(store / "processed" / run_id / "test.parquet")[manifest["feature_columns"]]
    assert set(model.predict(raw)) <= {0, 1, 2}  # raw rows in: the preprocessing is inside


def test_pca_example_runs_the_pipeline_with_an_explained_variance_curve(home):
    done = cli_run(EXAMPLES / "pca.yaml", home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "pass"
    assert result["evaluation_metric"] == "explained_variance_ratio"
    assert 0.6 <= result["metrics"]["explained_variance_ratio"] <= 1.0
    assert 0.5 < result["metrics"]["trustworthiness"] <= 1.0
    run_id = result["run_id"]
    for plot in ("projection.png", "explained_variance.png"):
        assert_png(home / "store" / "evaluations" / run_id / plot)
    model = load_model(home / "store" / "models" / run_id)
    raw = pd.read_parquet(home / "store" / "processed" / run_id / "test.parquet").drop(columns="target")
    assert model.transform(raw).shape == (len(raw), 3)


def test_dbscan_reports_noise_and_is_not_servable(settings, store, tmp_path):
    spec, _, trained, result = run_steps(
        settings,
        store,
        tmp_path,
        (EXAMPLES / "dbscan.yaml").read_text(),
    )
    assert set(result.metrics) == CLUSTER_METRICS | {"noise_fraction"}
    assert 0 <= result.metrics["noise_fraction"] < 0.2
    assert result.details["scored_on"].startswith("all rows") and result.details["scores_exclude_noise"]
    assert trained.manifest["servable"] is False
    assert "no predict for new rows" in trained.manifest["servable_reason"]
    assert result.plots == ["cluster_projection.png"]
    assert_png(tmp_path / "e" / "cluster_projection.png")


def test_davies_bouldin_is_judged_lower_is_better(settings, store, tmp_path):
    _, _, _, result = run_steps(settings, store, tmp_path, (EXAMPLES / "dbscan.yaml").read_text())
    value = result.value
    assert result.evaluation_metric == "davies_bouldin"
    above = judge("davies_bouldin", value, value + 0.1, attempt=1, max_retry=1)
    below = judge("davies_bouldin", value, value - 0.1, attempt=1, max_retry=1)
    assert above.decision == "pass" and "<=" in above.message
    assert below.decision == "retrain"


def test_autoencoder_clusters_on_its_latent_space_and_reloads(settings, store, tmp_path):
    import torch

    spec, prepared, trained, result = run_steps(
        settings, store, tmp_path, (EXAMPLES / "autoencoder.yaml").read_text()
    )
    assert set(result.metrics) == CLUSTER_METRICS
    assert result.details["latent_dim"] == 2 and result.details["external"]["adjusted_rand_index"] > 0.5
    assert trained.manifest["servable"] is True
    assert_png(tmp_path / "e" / "cluster_projection.png")

    model = load_model(tmp_path / "m")
    raw = prepared.features("test")
    clusters = model.predict(raw)
    assert clusters.shape == (len(raw),) and set(clusters) <= {0, 1, 2}
    # The torch state rebuilds the same network without pickle, and the export module agrees.
    state = torch.load(tmp_path / "m" / trained.manifest["torch_state"], weights_only=True)
    assert state["config"] == {"n_features": 13, "hidden_units": [32, 16], "latent_dim": 2, "n_clusters": 3}
    features = torch.as_tensor(np.asarray(model[:-1].transform(raw), dtype=np.float32))
    exported_clusters, latent = model[-1].to_torch()(features)
    assert np.array_equal(exported_clusters.numpy(), clusters)
    assert np.allclose(latent.detach().numpy(), model[-1].transform(features.numpy()), atol=1e-6)


def test_tsne_without_threshold_passes_and_says_so(settings, store, tmp_path):
    spec, _, trained, result = run_steps(settings, store, tmp_path, (EXAMPLES / "tsne.yaml").read_text())
    assert result.evaluation_metric == "trustworthiness" and 0.8 < result.value <= 1
    assert set(result.metrics) == {"trustworthiness", "silhouette"}
    assert (
        trained.manifest["servable"] is False
        and "cannot transform new rows" in trained.manifest["servable_reason"]
    )
    verdict = judge(result.evaluation_metric, result.value, spec.evaluation_threshold, attempt=1, max_retry=3)
    assert verdict.decision == "pass"
    assert "No evaluation_threshold was set" in verdict.message
    assert_png(tmp_path / "e" / "projection.png")
    assert joblib.load(tmp_path / "m" / "model.joblib")[-1].embedding_.shape == (150, 2)


def test_clustering_without_known_labels_still_scores(settings, store, tmp_path):
    rng = np.random.default_rng(0)
    blobs = np.vstack([rng.normal(c, 0.3, size=(40, 2)) for c in (0, 4, 8)])
    pd.DataFrame(blobs, columns=["x", "y"]).to_csv(tmp_path / "blobs.csv", index=False)
    _, _, _, result = run_steps(
        settings,
        store,
        tmp_path,
        f"learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: {tmp_path / 'blobs.csv'}\n"
        "hyperparameters: {n_clusters: 3}",
    )
    assert result.metrics["silhouette"] > 0.7
    assert "external" not in result.details


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            "algorithm: kmeans\ndataset_id: sklearn:iris\nhyperparameters: {k: 200}",
            ["k (n_clusters) = 200", "105 rows"],
        ),
        (
            "algorithm: tsne\ndataset_id: sklearn:iris\nhyperparameters: {perplexity: 150}",
            ["perplexity 150", "number of rows (150)"],
        ),
        (
            "algorithm: pca\ndataset_id: sklearn:iris\nhyperparameters: {num_components: 6}",
            ["num_components = 6", "4 features"],
        ),
        (
            "algorithm: kmeans\ndataset_id: sklearn:iris\nhyperparameters: {k: 3, feature_dim: 7}",
            ["feature_dim is 7", "4 feature columns"],
        ),
    ],
    ids=["k-above-rows", "perplexity-not-below-rows", "components-above-features", "feature-dim-mismatch"],
)
def test_hyperparameters_that_cannot_fit_the_data_are_named(settings, store, tmp_path, body, words):
    spec = parse_issue_body("learning_type: unsupervised\n" + body)
    prepare_data(spec, settings, store, tmp_path / "p")
    with pytest.raises(SpecError) as caught:
        train_model(spec, tmp_path / "p", tmp_path / "m")
    for word in words:
        assert word in str(caught.value)
    assert not (tmp_path / "m" / "model.joblib").exists()


def test_seed_spellings_k_and_feature_dim_are_accepted():
    spec = parse_issue_body(
        "learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: sklearn:iris\n"
        "hyperparameters: {k: 4, feature_dim: 4}"
    )
    assert spec.hyperparameters == {"n_clusters": 4, "feature_dim": 4}
    with pytest.raises(SpecError, match="given twice"):
        parse_issue_body(
            "learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: sklearn:iris\n"
            "hyperparameters: {k: 4, n_clusters: 3}"
        )
