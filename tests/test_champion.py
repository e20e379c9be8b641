"""Champion / challenger: when a version is in production, the judge scores it on the new attempt's
test split (or plays its policy on the same episodes) and the new version passes only if it meets
the threshold and is not worse than production by more than max_regression.

End to end through `issueops run` with the GitHub double (real MLflow on SQLite, the real local
runner), the pipeline's own steps for the other learning types, and the decision itself as a pure
function.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from issueops.config import Settings
from issueops.evaluation.judge import judge
from issueops.evaluation.supervised import ChampionScore
from issueops.registry.lifecycle import Registry
from issueops.reporting.status import STATUS_MARKER, render_result_table
from issueops.results import format_value
from tests.github_double import GitHubDouble
from tests.test_pipeline import cli

TOKEN = "ghp_" + "Ch4mpi0nT0kenValue" * 2
IRIS = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\nmodel_name: iris-cc\n"
    "evaluation_threshold: 0.85\nmax_retry: 0\nhyperparameters: {{n_estimators: {trees}, max_depth: 6}}\n{extra}"
)
# On iris's seeded 30-row test split: 10 trees score 0.9667, 20 trees 0.9 (both meet 0.85).
CHAMPION_ACCURACY, CHALLENGER_ACCURACY = "0.9667", "0.9"


@pytest.fixture
def github():
    with GitHubDouble(token=TOKEN) as double:
        yield double


def run_on_issue(github, home, tmp_path, name: str, body: str) -> tuple[int, dict, object]:
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": github.full_name, "GITHUB_API_URL": github.url}
    issue = github.create_issue(f"Train {name}", body=body, labels=["mlops:train"])
    (tmp_path / f"{name}.yaml").write_text(body)
    done = cli("run", str(tmp_path / f"{name}.yaml"), "--json", "--issue", str(issue), home=home, env=env)
    assert done.stdout, done.stderr
    return issue, json.loads(done.stdout), done


def test_a_challenger_that_loses_is_not_promoted_and_one_within_max_regression_is(home, tmp_path, github):
    _, champion, _ = run_on_issue(github, home, tmp_path, "champion", IRIS.format(trees=10, extra=""))
    assert champion["decision"] == "pass" and champion["champion"] is None  # nothing was in production
    registry = Registry.from_settings(Settings.from_env())
    assert registry.production("iris-cc").version == 1

    issue, lost, done = run_on_issue(github, home, tmp_path, "loser", IRIS.format(trees=20, extra=""))
    assert done.returncode == 4 and lost["decision"] == "fail"
    why = (
        f"accuracy {CHALLENGER_ACCURACY} meets the threshold (>= 0.85) but it is worse than production v1 "
        f"({CHAMPION_ACCURACY} on the same 30-row test split) by 0.0667, more than max_regression 0 "
        "allows, so it is not promoted."
    )
    assert lost["message"].startswith(why), lost["message"]
    assert lost["champion"]["version"] == 1 and lost["champion"]["lost"] is True
    # Production is untouched: no second version was even registered.
    assert registry.production("iris-cc").version == 1
    assert [v.version for v in registry.show("iris-cc").versions] == [1]

    comments = [c.body for c in github.comments_on(issue)]
    (status,) = [c for c in comments if STATUS_MARKER in c]
    side_by_side = f"| accuracy | 0.85 | {CHALLENGER_ACCURACY} | {CHAMPION_ACCURACY} | ❌ fail |"
    assert "| metric | threshold | value | production v1 | decision |" in status
    assert side_by_side in status and why in status
    (told,) = [c for c in comments if "issueops:notification" in c]
    assert why in told and "`iris-cc` v1 stays in production." in told
    assert f"| production v1 | {CHAMPION_ACCURACY} on the same 30-row test split |" in told
    history = {p: b.decode() for p, b in github.files().items() if p.endswith(f"-{issue}.md")}
    (page,) = history.values()
    assert "| metric | value | production v1 | threshold |" in page
    assert f"| **accuracy** | **{CHALLENGER_ACCURACY}** | {CHAMPION_ACCURACY} | 0.85 |" in page
    assert "Production v1 was scored on the same 30-row test split" in page

    # The same challenger with room to be 0.1 worse: it passes and becomes production.
    issue, won, done = run_on_issue(
        github, home, tmp_path, "tolerated", IRIS.format(trees=20, extra="max_regression: 0.1\n")
    )
    assert done.returncode == 0, done.stderr
    assert won["decision"] == "pass" and won["champion"]["lost"] is False
    assert won["message"] == (
        f"accuracy {CHALLENGER_ACCURACY} meets the threshold (>= 0.85) and it is within max_regression 0.1 "
        f"of production v1 ({CHAMPION_ACCURACY} on the same 30-row test split)."
    )
    assert registry.production("iris-cc").version == 2
    (status,) = [c.body for c in github.comments_on(issue) if STATUS_MARKER in c.body]
    assert f"| accuracy | 0.85 | {CHALLENGER_ACCURACY} | {CHAMPION_ACCURACY} | ✅ pass |" in status


# ---------------------------------------------------------------------- the pipeline's own steps


def train_through_judge(body: str, *, attempt: int = 1):
    """prepare, train, evaluate and judge with the pipeline's steps (no KFP): (run id, Judgement)."""
    from issueops.pipeline.execution import start_request
    from issueops.pipeline.steps import evaluate_step, judge_step, prepare_data_step, train_step
    from issueops.spec.body import parse_issue_body
    from issueops.store import open_store

    settings = Settings.from_env()
    spec = parse_issue_body(body)
    run_id = start_request(open_store(settings), spec, attempt=attempt)
    work, spec_json = settings.home / "work" / run_id, spec.to_json()
    prepare_data_step(spec_json, run_id, str(work / "p"))
    train_step(spec_json, run_id, str(work / "p"), str(work / "m"))
    evaluate_step(spec_json, run_id, str(work / "p"), str(work / "m"), str(work / "e"))
    return run_id, judge_step(spec_json, run_id, str(work / "e"), attempt)


def put_in_production(run_id: str, judgement) -> int:
    from issueops.pipeline.steps import register_step

    assert judgement.decision == "pass", judgement.message
    registration = register_step(run_id)
    registry = Registry.from_settings(Settings.from_env())
    return registry.approve(registration["model_name"], registration["version"], "test").version


REGRESSION = (
    "learning_type: supervised\nalgorithm: random_forest\ntask_type: regression\ndataset_id: sklearn:diabetes\nmodel_name: dia-rf\n"
    "evaluation_metric: rmse\nevaluation_threshold: 100\nmax_retry: 2\nhyperparameters: {trees}\n{extra}"
)


STUMP, FOREST = "{n_estimators: 1, max_depth: 1}", "{n_estimators: 50}"


def test_rmse_is_lower_is_better_and_a_loser_with_retries_left_asks_the_operator(home):
    stump_run, stump = train_through_judge(REGRESSION.format(trees=STUMP, extra=""))
    assert stump.champion is None
    assert put_in_production(stump_run, stump) == 1

    # A forest on the same split: a smaller rmse beats the stump in production.
    forest_run, forest = train_through_judge(REGRESSION.format(trees=FOREST, extra=""))
    assert forest.value < stump.value and forest.decision == "pass"
    assert forest.champion["value"] == stump.value  # production, scored again on the same split
    assert "meets the threshold (<= 100) and it is not worse than production v1" in forest.message
    assert put_in_production(forest_run, forest) == 2

    # compare_versions scores both as the judge does, on the newer one's split: the forest wins.
    from issueops.evaluation.supervised import compare_versions
    from issueops.store import open_store

    settings = Settings.from_env()
    compared = compare_versions(Registry.from_settings(settings), open_store(settings), "dia-rf", 2, 1)
    assert [s.value for s in compared.scores] == [stump.value, forest.value] and compared.better == 2
    assert compared.higher_is_better is False and compared.summary.endswith(
        f"v2 is better by {format_value(stump.value - forest.value)}."
    )

    # The stump again: a larger rmse, still within the threshold, loses; two retries are left.
    _, again = train_through_judge(REGRESSION.format(trees=STUMP, extra=""))
    assert again.decision == "retrain" and again.champion["value"] == forest.value
    assert (
        f"rmse {format_value(again.value)} meets the threshold (<= 100) but it is worse than production v2"
        in again.message
    )
    assert again.message.endswith(
        "so it is not promoted. 2 retries left: adjust the hyperparameters to retrain."
    )

    # The tolerance is in the metric's units, whichever way it points.
    margin = round(again.value - forest.value + 1)
    _, tolerated = train_through_judge(REGRESSION.format(trees=STUMP, extra=f"max_regression: {margin}\n"))
    assert tolerated.decision == "pass"
    assert f"within max_regression {margin} of production v2" in tolerated.message


def test_a_champion_with_another_feature_set_is_named_and_the_threshold_decides(home, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    frame["label"] = np.where(frame["a"] + frame["b"] > 0, "yes", "no")
    frame.to_csv(tmp_path / "three.csv", index=False)
    frame.drop(columns=["c"]).to_csv(tmp_path / "two.csv", index=False)
    body = (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: {path}\ntarget: label\n"
        "model_name: csv-rf\nevaluation_threshold: 0.7\nhyperparameters: {{n_estimators: 20}}\n"
    )
    run_id, verdict = train_through_judge(body.format(path=tmp_path / "three.csv"))
    put_in_production(run_id, verdict)

    _, verdict = train_through_judge(body.format(path=tmp_path / "two.csv"))
    assert verdict.decision == "pass"
    assert verdict.champion["value"] is None and verdict.champion["version"] == 1
    assert verdict.message.endswith(
        "Production v1 could not be scored on this attempt's data (the feature set changed: c is not in "
        "this attempt's data), so the threshold alone decided."
    )


def policy(path, weights) -> None:
    """A CartPole policy as the exporter writes one (obs -> action): push towards where the pole
    falls (angle + angular velocity), or with zero weights always push left."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = [
        numpy_helper.from_array(np.array(weights, dtype=np.float32).reshape(4, 1), "w"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", ["obs", "w"], ["score"]),
        helper.make_node("Greater", ["score", "zero"], ["right"]),
        helper.make_node("Cast", ["right"], ["chosen"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["chosen", "flat"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_rl_plays_the_champions_policy_on_the_same_episodes(home):
    """No Ray: two exported policies, the champion registered, the challenger through the steps."""
    from issueops.pipeline.execution import start_request
    from issueops.pipeline.steps import evaluate_step, judge_step, prepare_data_step
    from issueops.results import RunResult
    from issueops.spec.body import parse_issue_body
    from issueops.store import open_store

    spec = parse_issue_body(
        "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\nmodel_name: pole\n"
        "evaluation_threshold: 5\nmax_retry: 0\nhyperparameters: {evaluation_episodes: 3, training_iterations: 1}\n"
    )
    settings = Settings.from_env()
    registry = Registry.from_settings(settings)

    def model_dir(name: str, weights) -> str:
        directory = settings.home / name
        directory.mkdir()
        policy(directory / "policy.onnx", weights)
        manifest = {
            "learning_type": "reinforcement",
            "task_type": spec.task_type,
            "algorithm": "ppo",
            "file": "policy.onnx",
            "spec": spec.to_dict(),
        }
        (directory / "model.json").write_text(json.dumps(manifest))
        return str(directory)

    balancer = model_dir("balancer", [0, 0, 1, 1])
    registered = RunResult(
        run_id="train-20260101-000000-aaaa", spec=spec.to_dict(), decision="pass", message="ok",
        evaluation_metric="episode_reward_mean", threshold=5, metric_value=500.0,
        metrics={"episode_reward_mean": 500.0},
    )  # fmt: skip
    registry.register_version(
        "pole", registered, registry.log_run(registered, None), balancer, approve=True, actor="test"
    )

    run_id = start_request(open_store(settings), spec)
    work, spec_json = settings.home / "work" / run_id, spec.to_json()
    prepare_data_step(spec_json, run_id, str(work / "p"))
    evaluate_step(spec_json, run_id, str(work / "p"), model_dir("left", [0, 0, 0, 0]), str(work / "e"))
    verdict = judge_step(spec_json, run_id, str(work / "e"), 1)

    assert verdict.decision == "fail" and verdict.value < 20  # always left: the pole falls at once
    assert verdict.champion["value"] == 500.0 and verdict.champion["lost"] is True
    seeds = verdict.champion["scored_on"]
    assert seeds.startswith("the same 3 episodes of CartPole-v1, seeds ")
    evaluation = json.loads((work / "e" / "results.json").read_text())
    assert seeds.endswith(evaluation["details"]["seeds"])  # the challenger's own episodes
    assert "but it is worse than production v1 (500 on the same 3 episodes" in verdict.message


# ---------------------------------------------------------------------- the decision, pure


def score(value, version=3, metric="accuracy", **metrics):
    return ChampionScore(
        "m", version, metric, value=value, metrics=metrics, scored_on="the same 100-row test split"
    )


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "max_regression", "decision"),
    [
        ("accuracy", 0.95, 0.95, None, "pass"),  # a tie is not worse
        ("accuracy", 0.96, 0.95, None, "pass"),
        ("accuracy", 0.94, 0.95, None, "retrain"),
        ("accuracy", 0.94, 0.95, 0.01, "pass"),  # within the tolerance
        ("accuracy", 0.93, 0.95, 0.01, "retrain"),
        ("rmse", 40.0, 45.0, None, "pass"),  # lower is better
        ("rmse", 46.0, 45.0, None, "retrain"),
        ("rmse", 46.0, 45.0, 2.0, "pass"),
        ("rmse", 48.0, 45.0, 2.0, "retrain"),
    ],
)
def test_max_regression_counts_in_the_metrics_direction(
    metric, challenger, champion, max_regression, decision
):
    threshold = 0.9 if metric == "accuracy" else 50.0
    verdict = judge(
        metric, challenger, threshold, attempt=1, max_retry=1,
        champion=score(champion, metric=metric), max_regression=max_regression,
    )  # fmt: skip
    assert verdict.decision == decision, verdict.message
    assert verdict.champion["lost"] is (decision == "retrain")
    assert "production v3" in verdict.message


def test_without_retries_a_loser_fails_and_a_miss_still_names_production():
    lost = judge("accuracy", 0.91, 0.9, attempt=2, max_retry=1, champion=score(0.95))
    assert lost.decision == "fail" and lost.next_action == "rollback"
    assert lost.message.endswith("so it is not promoted. No retries are left after 2 attempts.")
    missed = judge("accuracy", 0.8, 0.9, attempt=1, max_retry=0, champion=score(0.7))
    assert missed.decision == "fail" and not missed.champion["lost"]
    assert missed.message.startswith("accuracy 0.8 misses the threshold (>= 0.9) and it is not worse than")
    no_threshold = judge(
        "silhouette", 0.2, None, attempt=1, max_retry=0, champion=score(0.3, metric="silhouette")
    )
    assert no_threshold.decision == "fail"
    assert no_threshold.message.startswith(
        "No evaluation_threshold was set; silhouette is 0.2, it is worse than"
    )


def test_without_a_champion_the_judgement_reads_as_before():
    assert (
        judge("accuracy", 1.0, 0.9, attempt=1, max_retry=0).message
        == "accuracy 1 meets the threshold (>= 0.9)."
    )
    unreadable = ChampionScore(
        "m", None, "accuracy", reason="the registry could not be read (MLflow is down)"
    )
    verdict = judge("accuracy", 0.95, 0.9, attempt=1, max_retry=0, champion=unreadable)
    assert verdict.decision == "pass" and verdict.message == (
        "accuracy 0.95 meets the threshold (>= 0.9). Production could not be scored on this attempt's data "
        "(the registry could not be read (MLflow is down)), so the threshold alone decided."
    )


def test_the_operators_question_and_the_summary_show_production_beside_the_attempt():
    from issueops.bridge.messages import question
    from issueops.lifecycle.state_machine import new_request
    from issueops.results import RunResult
    from issueops.spec.body import parse_issue_body

    spec = parse_issue_body(IRIS.format(trees=20, extra="").replace("max_retry: 0", "max_retry: 2"))
    request = new_request(spec, name="octo-models-7", repository="octo/models", issue=7, requested_by="ann")
    request.attempt = 1
    production = score(0.9667, version=1, accuracy=0.9667, f1_score=0.95)
    verdict = judge("accuracy", 0.9, 0.85, attempt=1, max_retry=2, champion=production)
    result = RunResult(
        run_id="train-20260101-000000-bbbb", spec=spec.to_dict(), decision=verdict.decision,
        message=verdict.message, evaluation_metric="accuracy", threshold=0.85, metric_value=0.9,
        metrics={"accuracy": 0.9, "f1_score": 0.89}, champion=verdict.champion,
    )  # fmt: skip
    asked = question(request, result, timeout_s=3600)
    assert "### @ann Attempt 1 did not beat production v1 — how should the next one train?" in asked
    assert "| metric | value | production v1 | threshold |" in asked
    assert "| **accuracy** | **0.9** | 0.9667 | >= 0.85 |" in asked
    assert "| f1_score | 0.89 | 0.95 | |" in asked
    assert "so it is not promoted. 2 retries left" in asked
    # The status comment's result table sets the production score beside the attempt's.
    assert "| accuracy | 0.85 | 0.9 | 0.9667 | 🔁 retrain |" in render_result_table(result)
