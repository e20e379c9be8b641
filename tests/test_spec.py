"""Issue bodies → TrainingSpec: formats, defaults, and every bad-input case named in the issue."""

import json

import pytest

from issueops.errors import SpecError
from issueops.spec.body import MAX_BODY_BYTES, parse_issue_body
from issueops.spec.catalog import ALGORITHMS, check_hyperparameters

RF = """learning_type: supervised
algorithm: random_forest
dataset_id: sklearn:breast_cancer
hyperparameters:
  n_estimators: 100
  max_depth: 10
evaluation_threshold: 0.85
"""


def problems(body: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_issue_body(body)
    return err.value.problems


def test_bare_yaml_with_defaults():
    spec = parse_issue_body(RF)
    assert spec.task_type == "classification"
    assert spec.evaluation_metric == "accuracy"
    assert spec.max_retry == 3
    assert spec.hyperparameters == {"n_estimators": 100, "max_depth": 10}


def test_json_body():
    body = json.dumps(
        {
            "learning_type": "supervised",
            "algorithm": "linear_regression",
            "dataset_id": "sklearn:diabetes",
            "hyperparameters": {"alpha": 0.1},
        }
    )
    spec = parse_issue_body(body)
    assert spec.task_type == "regression" and spec.evaluation_metric == "r2"
    assert spec.hyperparameters == {"alpha": 0.1}


def test_fenced_block_inside_markdown():
    body = f"Please train this.\n\n```yaml\n{RF}```\n\nThanks!\n\n```python\nprint('x')\n```\n"
    assert parse_issue_body(body).algorithm == "random_forest"


def test_defaults_per_learning_type():
    kmeans = parse_issue_body(
        "learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: sklearn:iris\n"
        "hyperparameters: {k: 3, feature_dim: 4}"
    )
    assert kmeans.task_type == "clustering" and kmeans.evaluation_metric == "silhouette"
    assert kmeans.hyperparameters["n_clusters"] == 3
    ppo = parse_issue_body("learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1")
    assert ppo.evaluation_metric == "episode_reward_mean" and ppo.dataset_id is None
    pca = parse_issue_body("learning_type: unsupervised\nalgorithm: pca\ndataset_id: sklearn:wine")
    assert pca.evaluation_metric == "explained_variance_ratio"


def test_lower_is_better_metric_accepts_unbounded_threshold():
    spec = parse_issue_body(
        "learning_type: supervised\nalgorithm: xgboost\ntask_type: regression\n"
        "dataset_id: sklearn:diabetes\nevaluation_metric: rmse\nevaluation_threshold: 55"
    )
    assert spec.evaluation_threshold == 55.0


def test_malformed_yaml():
    assert "not valid YAML" in problems("learning_type: supervised\nalgorithm: [random_forest\n")[0]


def test_body_with_no_spec():
    assert "No training spec found" in problems("Hi team, could someone train a model for me?")[0]
    assert "empty" in problems("   \n")[0]


def test_unknown_learning_type_and_algorithm():
    assert "learning_type" in problems("learning_type: semi\nalgorithm: x\ndataset_id: a")[0]
    found = problems("learning_type: supervised\nalgorithm: svm\ndataset_id: a")[0]
    assert "svm" in found and "random_forest" in found


def test_unknown_and_mistyped_hyperparameters_all_reported():
    found = problems(
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: a\n"
        "hyperparameters: {n_estimator: 10, max_depth: deep, min_samples_split: 1}"
    )
    assert len(found) == 3
    assert "not known for random_forest" in found[0] and "n_estimators" in found[0]
    assert "must be an integer" in found[1]
    assert ">= 2" in found[2]


def test_threshold_outside_bounds_for_bounded_metric():
    found = problems(RF.replace("0.85", "1.5"))
    assert "outside [0, 1]" in found[0]


def test_oversized_body():
    assert "limit is 64 KiB" in problems("learning_type: supervised\n" + "#" * (5 * 1024 * 1024))[0]
    assert MAX_BODY_BYTES == 64 * 1024


def test_yaml_bomb_is_refused():
    bomb = "learning_type: supervised\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\n"
    assert "anchors" in problems(bomb)[0] or "aliases" in problems(bomb)[0]


def test_python_tags_are_refused():
    found = problems("learning_type: !!python/object/apply:os.system ['echo hacked']\nalgorithm: x")
    assert "not valid YAML" in found[0]


def test_unknown_top_level_field_and_missing_dataset():
    found = problems("learning_type: supervised\nalgorithm: random_forest\nepochs: 3")
    assert any("unknown field" in p for p in found)
    assert any("dataset_id is required" in p for p in found)


def test_reinforcement_needs_environment():
    assert "environment is required" in problems("learning_type: reinforcement\nalgorithm: dqn")[0]


def test_max_retry_bounds():
    assert "max_retry" in problems(RF + "max_retry: -1")[0]
    assert "max_retry" in problems(RF + "max_retry: 99")[0]


def test_every_catalog_default_passes_its_own_check():
    for algorithm in ALGORITHMS.values():
        given = {p.name: p.default for p in algorithm.params if p.default is not None}
        assert check_hyperparameters(algorithm, given)[1] == [], algorithm.name


def test_adjusted_hyperparameters_merge_and_validate():
    spec = parse_issue_body(RF)
    assert spec.with_hyperparameters({"n_estimators": 200}).hyperparameters["n_estimators"] == 200
    with pytest.raises(SpecError, match="not known"):
        spec.with_hyperparameters({"learning_rate": 0.1})


def test_readme_algorithm_table_matches_the_catalog():
    from issueops.spec.catalog_docs import algorithm_table
    from tests.conftest import REPO

    assert algorithm_table() in (REPO / "README.md").read_text(), "run: issueops algorithms --markdown"
