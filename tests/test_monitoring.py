"""Drift verdicts on synthetic shifts, reference profiles, feedback and performance (issueops.monitoring)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance

from issueops.errors import InvalidInput, NotFound
from issueops.monitoring.drift import (
    Correction,
    DriftTest,
    WindowTooSmall,
    check_drift,
    choose_test,
    detect_drift,
)
from issueops.monitoring.inference_log import InferenceLog
from issueops.monitoring.performance import (
    estimate_accuracy,
    known_request_ids,
    measure_performance,
    read_feedback,
    record_feedback,
)
from issueops.monitoring.profile import (
    build_reference_profile,
    load_reference_profile,
    reference_profile_location,
    save_reference_profile,
)

KINDS = {"x": "numeric", "y": "numeric", "level": "numeric", "colour": "categorical", "member": "categorical"}
COLOURS = (["red", "green", "blue"], [0.5, 0.3, 0.2])


def table(rows: int, seed: int, *, shift: float = 0.0, scale: float = 1.0, new_colour: bool = False):
    """x is the feature the scenarios move; y, level (4 values), colour and member (2 values) stay."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(COLOURS[0], rows, p=COLOURS[1]).astype(object)
    if new_colour:
        colour[: rows // 4] = "purple"
    return pd.DataFrame(
        {
            "x": rng.normal(10 + shift, 2 * scale, rows),
            "y": rng.normal(0, 1, rows),
            "level": rng.integers(0, 4, rows).astype(float),
            "colour": colour,
            "member": rng.choice(["yes", "no"], rows, p=[0.3, 0.7]).astype(object),
        }
    )


def verdicts(report) -> dict[str, bool]:
    return {f.name: f.drift for f in report.features}


# (reference rows, current rows): Evidently's two regimes, p-value tests up to 1,000 reference rows.
SMALL, LARGE = (800, 600), (5000, 3000)


@pytest.mark.parametrize(
    ("sizes", "tests"),
    [
        (SMALL, {"x": "ks", "y": "ks", "level": "chisquare", "colour": "chisquare", "member": "z"}),
        (
            LARGE,
            {
                "x": "wasserstein",
                "y": "wasserstein",
                "level": "jensenshannon",
                "colour": "jensenshannon",
                "member": "jensenshannon",
            },
        ),
    ],
    ids=["small-reference", "large-reference"],
)
@pytest.mark.parametrize(
    ("scenario", "changes", "drifted"),
    [
        ("no shift", {}, set()),
        ("mean shift", {"shift": 1.5}, {"x"}),
        ("variance change", {"scale": 2.0}, {"x"}),
        ("new category", {"new_colour": True}, {"colour"}),
    ],
)
def test_drift_verdicts_on_synthetic_shifts(sizes, tests, scenario, changes, drifted):
    reference = table(sizes[0], seed=1)
    current = table(sizes[1], seed=2, **changes)
    report = detect_drift(reference, current, KINDS, model="m", version=3)
    assert {f.name: f.test for f in report.features} == tests
    assert {name for name, drift in verdicts(report).items() if drift} == drifted, scenario
    assert report.drift is False  # one feature of five is not half of them
    assert report.drift_share == pytest.approx(len(drifted) / 5)
    assert report.rows == sizes[1] and report.reference_rows == sizes[0]


def test_dataset_drifts_when_half_the_features_drift():
    reference = table(5000, seed=1)
    current = table(3000, seed=2, shift=1.5, new_colour=True)
    current["level"] = current["level"] + 1  # a value never seen, and one gone
    report = detect_drift(reference, current, KINDS)
    assert verdicts(report) == {"x": True, "y": False, "level": True, "colour": True, "member": False}
    assert report.drift is True and report.drift_share == pytest.approx(0.6)
    document = json.loads(report.to_json())
    assert {"model", "version", "rows", "drift", "drift_share", "features"} <= set(document)
    assert set(document["features"][0]) >= {
        "name",
        "test",
        "statistic",
        "p_value",
        "distance",
        "threshold",
        "drift",
    }


def test_distance_tests_report_distances_and_p_value_tests_report_p_values():
    small = detect_drift(table(800, 1), table(600, 2, shift=1.5), KINDS)
    x = small.features[0]
    assert x.p_value is not None and x.p_value < 1e-6 and x.distance is None and x.threshold == 0.05
    reference, current = table(5000, 1), table(3000, 2, shift=1.5)
    x = detect_drift(reference, current, KINDS).features[0]
    # The Wasserstein distance in units of the reference's standard deviation (about 1.5 / 2).
    expected = wasserstein_distance(reference["x"], current["x"]) / reference["x"].std(ddof=0)
    assert x.p_value is None and x.distance == pytest.approx(expected) and 0.7 < expected < 0.9
    assert x.threshold == 0.1


def test_multiple_testing_adjustment_keeps_chance_findings_out_of_the_verdict():
    rng = np.random.default_rng(7)
    kinds = {f"f{i}": "numeric" for i in range(30)}
    reference = pd.DataFrame({name: rng.normal(0, 1, 1000) for name in kinds})
    current = pd.DataFrame({name: rng.normal(0, 1, 800) for name in kinds})
    adjusted = detect_drift(reference, current, kinds)
    raw = detect_drift(reference, current, kinds, correction=Correction.NONE)
    chance = [f.name for f in adjusted.features if f.drift_unadjusted]
    assert chance, "30 tests of unchanged data: some p-values fall below 0.05 by chance"
    assert [f.name for f in raw.features if f.drift] == chance
    assert not any(f.drift for f in adjusted.features)
    for item in adjusted.features:
        assert item.p_adjusted >= item.p_value


def test_a_window_below_the_minimum_is_refused_with_the_number_needed():
    with pytest.raises(WindowTooSmall, match=r"holds 99 logged row\(s\) of m version 2; .* at least 100"):
        detect_drift(table(800, 1), table(99, 2), KINDS, model="m", version=2)
    assert WindowTooSmall.exit_code == 2
    assert detect_drift(table(800, 1), table(40, 2), KINDS, min_rows=40).rows == 40


@pytest.mark.parametrize(
    ("kind", "reference_rows", "unique", "expected"),
    [
        ("numeric", 1000, 6, DriftTest.KS),
        ("numeric", 1000, 5, DriftTest.CHI_SQUARE),
        ("numeric", 1000, 2, DriftTest.Z),
        ("categorical", 1000, 40, DriftTest.CHI_SQUARE),
        ("categorical", 50, 2, DriftTest.Z),
        ("numeric", 1001, 6, DriftTest.WASSERSTEIN),
        ("numeric", 1001, 5, DriftTest.JENSEN_SHANNON),
        ("categorical", 1001, 2, DriftTest.JENSEN_SHANNON),
    ],
)
def test_test_choice_follows_evidentlys_defaults(kind, reference_rows, unique, expected):
    assert choose_test(kind, reference_rows, unique) == expected


def test_verdicts_agree_with_evidently_where_it_is_installed():
    pytest.importorskip("evidently")
    from benchmarks.bench_monitoring import evidently_verdicts

    for sizes in (SMALL, LARGE):
        reference, current = table(sizes[0], 1), table(sizes[1], 2, shift=0.3, new_colour=True)
        ours = detect_drift(reference, current, KINDS, correction=Correction.NONE)
        theirs = evidently_verdicts(reference, current, KINDS)
        assert {f.name: (f.test, f.drift) for f in ours.features} == {
            name: (test, drift) for name, (test, _, drift) in theirs.items()
        }, sizes


def classifier_profile(rows: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    train = table(rows, seed)
    proba = rng.dirichlet([1.0, 1.0], 1000)
    truth = (rng.random(1000) < proba[:, 1]).astype(int)
    return build_reference_profile(
        train,
        feature_columns={"input": ["x", "y", "level"], "categorical": ["colour", "member"]},
        task_type="classification",
        test_outputs={"label": proba.argmax(1), "probabilities": proba},
        test_labels=truth,
        classes=["no", "yes"],
        evaluation_metric="accuracy",
        metric_value=0.8,
        sample_rows=2000,
        seed=3,
    )


def test_reference_profile_describes_the_features_as_served_and_round_trips(store):
    profile = classifier_profile()
    by_name = {f.name: f for f in profile.features}
    assert profile.kinds == KINDS
    assert by_name["member"].kind == "binary" and by_name["level"].unique == 4
    assert by_name["x"].mean == pytest.approx(10, abs=0.1) and by_name["x"].std == pytest.approx(2, abs=0.1)
    assert set(by_name["colour"].frequencies) == {"red", "green", "blue"}
    assert profile.sample_rows == 2000 and profile.train_rows == 3000
    assert profile.sample.equals(classifier_profile().sample)  # seeded
    assert profile.prediction.kind == "categorical" and set(profile.prediction.frequencies) == {"no", "yes"}

    assert reference_profile_location("iris-rf", 4) == "monitoring/iris-rf/4/reference"
    save_reference_profile(store, profile, "iris-rf", 4)
    loaded = load_reference_profile(store, "iris-rf", 4)
    assert loaded.version == 4 and loaded.kinds == KINDS and loaded.classes == ["no", "yes"]
    pd.testing.assert_frame_equal(loaded.sample, profile.sample)
    assert list(loaded.predictions.columns) == ["prediction", "probability_0", "probability_1", "true_label"]
    with pytest.raises(NotFound, match="Version 5 of iris-rf has no reference profile"):
        load_reference_profile(store, "iris-rf", 5)


def test_profile_of_prepared_data_uses_the_raw_training_columns(settings, store, tmp_path):
    from issueops.data.prepare import prepare_data
    from issueops.spec.body import parse_issue_body

    spec = parse_issue_body("learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n")
    prepared = prepare_data(spec, settings, store, tmp_path / "prepared")
    features = prepared.metadata["feature_columns"]
    profile = build_reference_profile(
        prepared.table("train"), feature_columns={"input": features}, task_type="classification"
    )
    assert [f.name for f in profile.features] == features
    raw = prepared.table("train")[features[0]]
    assert profile.features[0].mean == pytest.approx(raw.mean())  # not the scaled values
    with pytest.raises(InvalidInput, match="lacks the feature column"):
        build_reference_profile(prepared.table("train"), feature_columns={"input": ["nope"]}, task_type="x")


def logged(frame: pd.DataFrame, outputs: dict[str, np.ndarray], model: str = "m", version: int = 1):
    keys = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(frame))],
            "row": 0,
            "time": pd.Timestamp("2026-01-01", tz="UTC"),
            "version": version,
        }
    )
    return InferenceLog(model, version, keys, frame.reset_index(drop=True), outputs)


def test_prediction_drift_compares_outputs_with_the_test_split():
    profile = classifier_profile()
    current = table(1500, 9)
    same = logged(current, {"label": np.random.default_rng(1).integers(0, 2, 1500)})
    skewed = logged(current, {"label": np.ones(1500, dtype=np.int64)})  # always "yes"
    assert check_drift(profile, same).prediction.drift is False
    report = check_drift(profile, skewed)
    assert report.prediction.drift is True and report.prediction.test == "z"
    assert report.prediction_drift is True and report.to_dict()["prediction_drift"] is True


def test_fp32_inputs_are_compared_at_the_precision_they_were_sent():
    profile = classifier_profile()
    current = table(1500, 9)
    current["level"] = current["level"] / 10  # 0.1, 0.2, 0.3: not exact in FP32
    profile.sample["level"] = profile.sample["level"] / 10
    for name in ("x", "y", "level"):
        current[name] = current[name].astype(np.float32)
    report = check_drift(profile, logged(current, {"label": np.zeros(1500, dtype=np.int64)}))
    level = next(f for f in report.features if f.name == "level")
    assert level.test == "jensenshannon" and level.drift is False


def test_plots_show_every_feature_and_the_predictions(tmp_path):
    from PIL import Image

    profile = classifier_profile()
    report = check_drift(
        profile, logged(table(600, 4, shift=2), {"label": np.zeros(600, dtype=np.int64)}), plots_dir=tmp_path
    )
    assert len(report.plots) == 6
    assert all(Image.open(p).size[0] > 300 for p in report.plots)


FEEDBACK = (
    "request_id,label,row\n"
    + "".join(f"r{i},{'yes' if i % 4 else 'no'},0\n" for i in range(60))
    + "ghost-1,yes,0\nr1,maybe,0\nr2,yes,first\n,no,0\n"
)


def test_feedback_counts_unknown_ids_and_wrong_labels_and_keeps_everything(store):
    log = logged(table(100, 1), {"label": np.ones(100, dtype=np.int64)})
    result = record_feedback(
        store,
        "m",
        FEEDBACK.encode(),
        name="labels.csv",
        task_type="classification",
        classes=["no", "yes"],
        known_request_ids=known_request_ids(log),
    )
    assert (
        result.records,
        result.accepted,
        result.unknown_requests,
        result.wrong_type,
        result.malformed,
    ) == (
        64,
        60,
        1,
        1,
        2,
    )
    assert "ghost-1" in result.summary() and "'maybe' is not one of the classes no, yes" in result.summary()
    stored = [json.loads(line) for line in store.get_bytes(result.key).splitlines()]
    assert len(stored) == 64 and {r["status"] for r in stored} == {
        "ok",
        "unknown_request",
        "wrong_type",
        "malformed",
    }
    assert store.get_bytes(result.key.replace(".feedback.jsonl", ".original.csv")) == FEEDBACK.encode()
    labels = read_feedback(store, "m")
    assert len(labels) == 61  # the accepted ones and the unknown id, which may be logged later


def test_feedback_for_a_regressor_refuses_text_labels_and_reads_json_lines(store):
    lines = [
        json.dumps({"request_id": "a", "label": 1.5}),
        json.dumps({"request_id": "b", "label": "2.5"}),
        json.dumps({"request_id": "c", "label": "high"}),
        json.dumps({"request_id": "d", "label": True}),
        "not json",
    ]
    result = record_feedback(
        store,
        "reg",
        "\n".join(lines).encode(),
        name="l.jsonl",
        task_type="regression",
        known_request_ids={"a", "b", "c", "d"},
    )
    assert (result.accepted, result.wrong_type, result.malformed) == (2, 2, 1)
    assert sorted(read_feedback(store, "reg")["label"]) == [1.5, 2.5]


def test_performance_on_labelled_traffic_against_the_registered_metric(store):
    log = logged(table(100, 1), {"label": np.ones(100, dtype=np.int64)})  # always "yes"
    record_feedback(
        store, "m", FEEDBACK.encode(), name="l.csv", task_type="classification", classes=["no", "yes"],
        known_request_ids=known_request_ids(log),
    )  # fmt: skip
    report = measure_performance(
        log, read_feedback(store, "m"), task_type="classification", metric="accuracy",
        classes=["no", "yes"], registered=0.9, tolerance=0.05,
    )  # fmt: skip
    assert report.value == pytest.approx(0.75) and report.labelled_rows == 60
    assert report.estimated is False and report.degraded is True and report.delta == pytest.approx(-0.15)
    with pytest.raises(
        WindowTooSmall, match=r"60 logged row\(s\) of m in the window have a label; .* at least 61"
    ):
        measure_performance(
            log, read_feedback(store, "m"), task_type="classification", metric="accuracy",
            classes=["no", "yes"], min_labelled=61,
        )  # fmt: skip


def test_cbpe_estimates_accuracy_without_labels_and_calibrates_an_overconfident_model():
    rng = np.random.default_rng(11)

    def sample(rows):
        p = rng.beta(2, 2, rows)  # the true probability of "yes"
        truth = (rng.random(rows) < p).astype(int)
        shown = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))  # the model is overconfident
        return np.column_stack([1 - shown, shown]), truth

    ref_proba, ref_truth = sample(3000)
    cur_proba, cur_truth = sample(5000)
    actual = float(np.mean(cur_proba.argmax(1) == cur_truth))
    calibration = pd.DataFrame(
        {"probability_0": ref_proba[:, 0], "probability_1": ref_proba[:, 1], "true_label": ref_truth}
    )
    calibrated, was_calibrated = estimate_accuracy(cur_proba, None, calibration)
    raw, raw_calibrated = estimate_accuracy(cur_proba)
    assert was_calibrated and not raw_calibrated
    assert abs(calibrated - actual) < 0.02
    assert raw - actual > 0.1  # overconfidence overstates accuracy until calibrated


def test_performance_without_labels_is_an_estimate_and_says_so():
    from issueops.monitoring.performance import check_performance

    profile = classifier_profile()
    proba = np.random.default_rng(5).dirichlet([1.0, 1.0], 400)
    log = logged(table(400, 2), {"label": proba.argmax(1), "probabilities": proba})
    report = check_performance(
        profile,
        log,
        pd.DataFrame(columns=["request_id", "row", "label"]),
        registered_metrics={"accuracy": 0.8},
    )
    assert report.estimated is True and report.metric == "accuracy" and report.labelled_rows == 0
    assert report.registered == 0.8 and "CBPE" in report.method and "calibrated on 1000" in report.method
    assert json.loads(report.to_json())["estimated"] is True


def test_the_package_step_saves_the_profile_and_drift_reads_only_it(home, store, capsys):
    """A trained version packaged by the pipeline's step carries its profile; `issueops monitor
    drift` then judges served traffic with the run's data gone from the store."""
    import shutil

    from issueops.cli import main
    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.monitoring.payloads import v2_tensors
    from issueops.pipeline.steps import deploy_step, package_step, promote_step
    from tests.test_serving import RF_BODY, train_and_register

    run = train_and_register(RF_BODY.format(n=5, extra=""))
    package = package_step(run["run_id"])
    promote_step(run["run_id"])  # production: what drift looks at by default
    deploy_step(run["run_id"])
    version = int(run["version"])
    assert package["reference_profile"]["uri"].endswith(reference_profile_location("bc-rf", version))
    profile = load_reference_profile(store, "bc-rf", version)
    metadata = json.loads(store.get_bytes(f"processed/{run['run_id']}/metadata.json"))
    evaluation = json.loads(store.get_bytes(f"evaluations/{run['run_id']}/results.json"))
    assert [f.name for f in profile.features] == metadata["feature_columns"]
    assert profile.train_rows == metadata["rows"]["train"] and profile.sample_rows == profile.train_rows
    assert (profile.classes, profile.evaluation_metric) == (metadata["classes"], "accuracy")
    assert profile.metric_value == pytest.approx(evaluation["value"])
    predictions = profile.predictions
    assert len(predictions) == metadata["rows"]["test"] and set(predictions["true_label"]) == {0, 1}
    # The graph's own labels on the test split score what the evaluation measured.
    named = predictions["prediction"].map({c: i for i, c in enumerate(profile.classes)})
    assert (named == predictions["true_label"]).mean() == pytest.approx(evaluation["value"])

    for prefix in ("processed", "models", "evaluations"):
        shutil.rmtree(store.root / prefix / run["run_id"])
    logger = PayloadLogger(store)
    shifted = profile.sample.head(150).to_numpy(np.float64) * 3
    for i, row in enumerate(shifted):
        request = {"inputs": v2_tensors({"input": row.reshape(1, -1).astype(np.float32)})}
        response = {"outputs": v2_tensors({"label": np.array([1]), "probabilities": np.array([[0.1, 0.9]])})}
        logger.log("bc-rf", version, request, response, request_id=f"r{i}")
    logger.close()
    assert main(["monitor", "drift", "bc-rf", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == version and report["rows"] == 150 and report["drift"] is True
