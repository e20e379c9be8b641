"""`issueops monitor check`: triggers of production models against real MLflow (SQLite), the local
store and the GitHub double: one proposal per model and trigger, reminders, resolution, cooldown,
schedule, GitHub failing and no GitHub at all; the CloudEvents receiver over real HTTP."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from issueops.bridge.events import interpret
from issueops.cli import main
from issueops.errors import InvalidInput
from issueops.github import GitHubClient, RetryPolicy
from issueops.monitoring.inference_log import read_inference_log
from issueops.monitoring.payload_logger import PayloadLogger
from issueops.monitoring.payloads import v2_tensors
from issueops.monitoring.performance import record_feedback
from issueops.monitoring.profile import build_reference_profile, save_reference_profile
from issueops.monitoring.proposals import (
    PROPOSAL_LABEL,
    Proposal,
    proposal_ref,
    render_body,
    spec_from_proposal,
)
from issueops.monitoring.trigger_checks import TriggerPolicy, window_bounds
from issueops.monitoring.trigger_state import Action, load_state, state_key
from issueops.monitoring.triggers import check_triggers
from issueops.pipeline.execution import check_inputs
from issueops.pipeline.runs import RunRecord
from issueops.registry.lifecycle import Registry
from issueops.results import RunResult
from issueops.spec.body import SpecError, parse_issue_body, validate_spec

try:
    from tests.github_double import GitHubDouble
except ModuleNotFoundError:  # pytest put tests/ on sys.path, not the repository root
    from github_double import GitHubDouble

TOKEN = "issueops-test-credential-5b1d0e"
FAST = RetryPolicy(attempts=3, backoff=0.01, max_wait=0.5)
COLUMNS = {"input": ["age", "income"], "categorical": ["plan"]}
ISSUES = "POST /repos/{owner}/{repo}/issues"
# Hour-long windows, three of them, and an hour of quiet after each new production version.
POLICY = TriggerPolicy(
    drift_window=timedelta(hours=1),
    drift_windows=3,
    cooldown=timedelta(hours=1),
    remind_every=timedelta(hours=1),
    performance_window=timedelta(hours=2),  # shorter than the drift windows: they are read in full
)
_counter = itertools.count(1)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    Registry(uri)  # creating the database is the slow part: once per module
    return uri


@pytest.fixture
def env(home, tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    from issueops.config import Settings
    from issueops.store import open_store

    settings = Settings.from_env()
    return settings, open_store(settings), Registry(tracking_uri)


@pytest.fixture
def gh():
    with GitHubDouble(token=TOKEN) as double:
        yield double


@pytest.fixture
def github(gh):
    client = GitHubClient(TOKEN, gh.full_name, api_url=gh.url, retry=FAST, timeout=2, throttle=False)
    yield client
    client.close()


def features(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40 + shift, 8, rows),
            "income": rng.gamma(3, 1000, rows) * (1 + shift / 10),
            "plan": rng.choice(["basic", "plus", "pro"], rows, p=[0.6, 0.3, 0.1]).astype(object),
        }
    )


def register(store, registry: Registry, model: str | None = None, **spec_fields) -> tuple[str, int]:
    """A version put into production at once, with the spec it was trained with, its prepared
    data's metadata and its reference profile, as the pipeline leaves them."""
    model = model or f"churn-{next(_counter)}"
    run_id = f"train-20260301-000000-{next(_counter):04x}"
    spec = validate_spec(
        {
            "learning_type": "supervised",
            "algorithm": "random_forest",
            "dataset_id": "sklearn:breast_cancer",
            "model_name": model,
            "evaluation_threshold": 0.8,
            "hyperparameters": {"n_estimators": 50},
            **spec_fields,
        }
    ).to_dict()
    RunRecord(store, run_id).write("request.json", {"spec": spec, "issue": 7, "attempt": 1})
    store.put_bytes(f"processed/{run_id}/metadata.json", json.dumps({"target": "churned"}).encode())
    result = RunResult(
        run_id=run_id,
        spec=spec,
        decision="pass",
        message="accuracy 0.9",
        evaluation_metric="accuracy",
        threshold=0.8,
        metric_value=0.9,
        metrics={"accuracy": 0.9},
    )
    model_dir = store.root / "model-files" / run_id
    model_dir.mkdir(parents=True)
    (model_dir / "model.json").write_text("{}")
    info = registry.register_version(
        model, result, registry.log_run(result), model_dir, approve=True, actor="ci"
    )
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1], 300)
    profile = build_reference_profile(
        features(900, 0),
        feature_columns=COLUMNS,
        task_type="classification",
        test_outputs={"label": proba.argmax(1), "probabilities": proba},
        # the test split's labels agree with the model nine times in ten: accuracy 0.9, as registered
        test_labels=np.where(rng.random(300) < 0.9, proba.argmax(1), 1 - proba.argmax(1)),
        classes=["stay", "leave"],
        evaluation_metric="accuracy",
        metric_value=0.9,
    )
    save_reference_profile(store, profile, model, info.version)
    return model, info.version


def serve(
    store, model: str, version: int, rows: pd.DataFrame, start: datetime, *, prefix: str, step: float = 1.0
) -> list[str]:
    """Log one request per row, `step` seconds apart from `start`, as `issueops serve` does; the ids."""
    logger = PayloadLogger(store)
    ids = []
    for i, row in enumerate(rows.itertuples(index=False)):
        request = {
            "inputs": v2_tensors(
                {
                    "input": np.array([[row.age, row.income]], dtype=np.float32),
                    "categorical": np.array([[row.plan]], dtype=object),
                }
            )
        }
        label = np.array([1 if row.age > 45 else 0])
        proba = np.array([[0.2, 0.8] if label[0] else [0.8, 0.2]], dtype=np.float32)
        response = {"outputs": v2_tensors({"label": label, "probabilities": proba})}
        ids.append(f"{prefix}-{i}")
        logger.log(
            model, version, request, response, request_id=ids[-1], time=start + timedelta(seconds=i * step)
        )
    logger.close()
    return ids


def serve_windows(store, model, version, now, *, shift: float, rows: int = 150, seed: int = 0) -> list[str]:
    """Traffic in each of the drift windows that a check at `now` judges."""
    ids = []
    for index, (start, _) in enumerate(window_bounds(now, POLICY)):
        data = features(rows, seed + index, shift=shift)
        ids += serve(store, model, version, data, start + timedelta(minutes=1), prefix=f"{start:%H%M}-{seed}")
    return ids


def check(store, registry, model, now, *, github=None, policy=POLICY, act=True):
    """`issueops monitor check --model MODEL` at `now` (the MLflow database is shared by the module)."""
    return check_triggers(store, registry, policy=policy, github=github, act=act, now=now, models=[model])


def trigger(report, kind: str):
    return {t.kind: t for t in report.models[0].triggers}[kind]


def label_feedback(store, model, version, ids, *, wrong_every: int = 0, right_every: int = 0) -> None:
    """Delayed labels for `ids`: the model's own answer, except every `wrong_every`-th (or all but
    every `right_every`-th), stored as `issueops monitor feedback` stores them."""
    log = read_inference_log(store, model, version)
    predicted = dict(zip(log.keys["request_id"], np.asarray(log.outputs["label"]).reshape(-1), strict=True))
    rows = []
    for n, request_id in enumerate(ids):
        right = (n % wrong_every != 0) if wrong_every else (n % right_every == 0)
        answer = int(predicted[request_id]) if right else 1 - int(predicted[request_id])
        rows.append(f"{request_id},{['stay', 'leave'][answer]}\n")
    record_feedback(
        store, model, ("request_id,label\n" + "".join(rows)).encode(), name="labels.csv",
        task_type="classification", classes=["stay", "leave"], known_request_ids=set(predicted),
    )  # fmt: skip


def production_since(registry: Registry, model: str) -> datetime:
    record = [r for r in registry.history(model) if r.action == "promote"][-1]
    return datetime.fromisoformat(record.time)


def proposals(gh: GitHubDouble) -> list:
    return [i for i in gh.state.issues.values() if PROPOSAL_LABEL in i.labels]


# ---------------------------------------------------------------------- drift: one issue, then comments


def test_drift_opens_one_ready_proposal_then_reminds_then_resolves(env, gh, github):
    settings, store, registry = env
    model, version = register(store, registry)
    now = production_since(registry, model) + timedelta(hours=5)
    ids = serve_windows(store, model, version, now, shift=20)
    label_feedback(store, model, version, ids[::3], wrong_every=50)  # performance holds
    report = check(store, registry, model, now, github=github)

    drift = trigger(report, "drift")
    assert drift.firing and drift.action == Action.OPENED
    assert drift.summary.startswith("Drift persisted over the last 3 windows of 1h")
    [issue] = proposals(gh)
    assert issue.labels == [PROPOSAL_LABEL] and "mlops:train" not in issue.labels
    assert issue.title == f"Retrain {model}: drift persisted over 3 windows"
    assert proposal_ref(issue.body).model == model and proposal_ref(issue.body).trigger == "drift"
    assert "| window (UTC) | rows | drifted features | drift share | verdict |" in issue.body
    assert "| age | ks |" in issue.body and "/approve-retrain" in issue.body
    # The plots are committed beside the history (one commit) and shown as images.
    committed = [
        p for p in gh.files() if p.startswith(f"monitoring/{model}/proposals/") and p.endswith(".png")
    ]
    assert committed and all(f"{p}?raw=true" in issue.body for p in committed)

    # The spec is the version's own, pointed at the exported window with its labels: ready to run.
    spec = spec_from_proposal(issue.body, check_inputs=lambda s: check_inputs(s, settings, store))
    assert (spec.model_name, spec.algorithm, spec.hyperparameters["n_estimators"]) == (
        model,
        "random_forest",
        50,
    )
    assert spec.dataset_id.startswith(f"{model}-drift-") and spec.target == "churned"
    # Adding mlops:train to it is a training request the bridge reads today, from this body.
    labeled = {
        "action": "labeled",
        "label": {"name": "mlops:train"},
        "issue": {
            "number": issue.number, "state": "open", "body": issue.body,
            "labels": [{"name": PROPOSAL_LABEL}, {"name": "mlops:train"}],
        },
        "repository": {"full_name": gh.full_name},
        "sender": {"login": "alice"},
    }  # fmt: skip
    intent = interpret("issues", labeled)
    assert intent.kind == "request" and parse_issue_body(intent.body) == spec
    exported = pd.read_csv(store.root / "datasets" / spec.dataset_id / "raw" / "train.csv")
    assert list(exported.columns) == ["age", "income", "plan", "churned"] and len(exported) == 150
    assert set(exported["churned"]) == {"stay", "leave"}

    # The next hour drifts too: a comment on the same issue, not a second issue; also when the
    # state file was lost in between (the issue is found again by its marker).
    later = now + timedelta(hours=1)
    serve(
        store, model, version, features(150, 9, shift=20), window_bounds(later, POLICY)[-1][0], prefix="late"
    )
    store.put_bytes(state_key(model), b"{not json")
    check(store, registry, model, later, github=github)
    assert len(proposals(gh)) == 1
    [again] = gh.comments_on(issue.number)
    assert "Firing again." in again.body and "<!-- issueops:" in again.body

    even_later = later + timedelta(hours=1)
    serve(
        store,
        model,
        version,
        features(150, 10, shift=20),
        window_bounds(even_later, POLICY)[-1][0],
        prefix="l2",
    )
    check(store, registry, model, even_later, github=github)
    check(store, registry, model, even_later, github=github)  # not due again
    comments = gh.comments_on(issue.number)
    assert len(proposals(gh)) == 1 and [c.body.split("**")[1] for c in comments] == [
        "Firing again.",
        "Still firing.",
    ]

    # An hour without drift ends the run of drifting windows: the issue hears so, once.
    calm = even_later + timedelta(hours=1)
    serve(store, model, version, features(150, 11), window_bounds(calm, POLICY)[-1][0], prefix="calm")
    result = check(store, registry, model, calm, github=github)
    drift = trigger(result, "drift")
    assert not drift.firing and drift.action == Action.RESOLVED
    assert gh.comments_on(issue.number)[-1].body.split("**")[1] == "Resolved:"
    check(store, registry, model, calm, github=github)
    assert len(gh.comments_on(issue.number)) == 3 and [i.title for i in proposals(gh)] == [issue.title]
    assert load_state(store, model).triggers["drift"].firing is False


# ---------------------------------------------------------------------- schedule and cooldown


def test_schedule_fires_after_the_cooldown_and_a_new_production_version_restarts_it(env, gh, github):
    _, store, registry = env
    model, _ = register(store, registry, retrain_every="2h")
    since = production_since(registry, model)
    policy = TriggerPolicy(cooldown=timedelta(hours=3))

    quiet = check(
        store, registry, model, since + timedelta(hours=2, minutes=30), github=github, policy=policy
    )
    schedule = trigger(quiet, "schedule")
    assert not schedule.firing and "nothing fires in the cooldown" in schedule.summary and proposals(gh) == []

    due = check(store, registry, model, since + timedelta(hours=4), github=github, policy=policy)
    schedule = trigger(due, "schedule")
    assert schedule.firing and schedule.action == Action.OPENED
    [issue] = proposals(gh)
    assert issue.title == f"Retrain {model}: scheduled (retrain_every 2h)"
    assert "retrain every 2h, and version 1 has been in production for 4h" in issue.body
    # Never served: nothing to export, so the spec keeps its own dataset.
    assert spec_from_proposal(issue.body).dataset_id == "sklearn:breast_cancer"

    # A retrain went to production: its clock starts again, and the proposal hears it is resolved.
    _, version = register(store, registry, model, retrain_every="2h")
    assert version == 2
    after = check(
        store,
        registry,
        model,
        production_since(registry, model) + timedelta(minutes=30),
        github=github,
        policy=policy,
    )
    assert after.models[0].version == 2
    assert "Version 2 is in production (after version 1)" in after.models[0].notes[0]
    schedule = trigger(after, "schedule")
    assert not schedule.firing and schedule.action == Action.RESOLVED
    assert "a retrain is due at" in gh.comments_on(issue.number)[-1].body and len(proposals(gh)) == 1


# ---------------------------------------------------------------------- performance


def test_degraded_performance_on_delayed_labels_opens_its_own_proposal(env, gh, github):
    _, store, registry = env
    model, version = register(store, registry)
    now = production_since(registry, model) + timedelta(hours=5)
    ids = serve(store, model, version, features(200, 3), now - timedelta(hours=2), prefix="p")
    label_feedback(store, model, version, ids, right_every=3)  # accuracy about 0.33 against 0.9
    report = check(store, registry, model, now, github=github)

    triggers = {t.kind: t for t in report.models[0].triggers}
    assert triggers["performance"].firing and triggers["performance"].action == Action.OPENED
    assert not triggers["drift"].firing and "1 complete window" not in triggers["drift"].summary
    [issue] = proposals(gh)
    assert issue.title == f"Retrain {model}: accuracy degraded"
    assert "| accuracy | 0.9 | 0.335 | -0.565 | 0.02 | 200 labelled rows |" in issue.body
    spec = spec_from_proposal(issue.body)
    assert spec.dataset_id.startswith(f"{model}-performance-")


# ---------------------------------------------------------------------- GitHub failing


def test_a_failed_answer_after_github_opened_the_issue_does_not_open_a_second(env, gh, github):
    _, store, registry = env
    model, _ = register(store, registry, retrain_every="1h")
    now = production_since(registry, model) + timedelta(hours=2)
    gh.inject(ISSUES, 502, applied=True)  # GitHub opens it, then answers 502

    report = check(store, registry, model, now, github=github)

    schedule = trigger(report, "schedule")
    assert schedule.action == Action.OPENED and report.errors == []
    assert len(proposals(gh)) == 1 and len(gh.calls(ISSUES)) == 1
    assert gh.comments_on(schedule.issue) == []


def test_github_down_keeps_the_proposal_in_the_store_and_opens_it_once_github_is_back(env, gh, github):
    _, store, registry = env
    model, _ = register(store, registry, retrain_every="1h")
    now = production_since(registry, model) + timedelta(hours=2)
    gh.inject("*", 503, times=1000)

    down = check(store, registry, model, now, github=github)

    schedule = trigger(down, "schedule")
    assert schedule.action == Action.STORED and proposals(gh) == []
    assert schedule.proposal.startswith(f"monitoring/{model}/proposals/") and store.exists(schedule.proposal)
    assert (
        down.errors
        and "GitHub failed (503)" in down.errors[0]
        and "the next check opens the issue" in down.errors[0]
    )
    assert down.models[0].proposals and "```yaml" in down.models[0].proposals[0]
    assert load_state(store, model).triggers["schedule"].pending is True

    gh.heal()
    check(store, registry, model, now + timedelta(minutes=10), github=github)
    check(store, registry, model, now + timedelta(minutes=20), github=github)
    [issue] = proposals(gh)
    assert proposal_ref(issue.body).trigger == "schedule" and gh.comments_on(issue.number) == []
    state = load_state(store, model).triggers["schedule"]
    assert (state.pending, state.issue, state.firing) == (False, issue.number, True)


# ---------------------------------------------------------------------- the command, without GitHub


def test_without_open_issues_the_verdicts_are_only_printed(env):
    _, store, registry = env
    model, _ = register(store, registry, retrain_every="1h")
    now = production_since(registry, model) + timedelta(days=2)

    report = check(store, registry, model, now, policy=None, act=False)

    schedule = trigger(report, "schedule")
    assert schedule.firing and schedule.action == Action.WOULD_OPEN
    assert store.list(f"monitoring/{model}/proposals") == [] and report.models[0].proposals == []
    assert (
        load_state(store, model).triggers.get("schedule") is None
        or not load_state(store, model).triggers["schedule"].firing
    )


def test_check_without_github_writes_the_proposal_to_the_store_and_prints_it(env, tmp_path, capsys):
    _, store, registry = env
    model, version = register(store, registry)
    since = production_since(registry, model)
    ids = serve(store, model, version, features(60, 4), since, prefix="c", step=0.001)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "request_id,label\n" + "".join(f"{i},{'stay' if n % 4 else 'leave'}\n" for n, i in enumerate(ids))
    )
    assert main(["monitor", "feedback", model, str(labels)]) == 0
    # The command judges at the wall clock: past the one-second cooldown.
    time.sleep(max(0.0, (since + timedelta(seconds=1.2) - datetime.now(UTC)).total_seconds()))
    capsys.readouterr()
    argv = ["monitor", "check", "--open-issues", "--model", model, "--cooldown", "1s"]
    argv += ["--min-rows", "50", "--min-labelled", "50"]

    code = main(argv)

    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    [key] = [k for k in store.list(f"monitoring/{model}/proposals") if k.endswith(".md")]
    body = store.get_bytes(key).decode()
    assert body.rstrip() in out and f"proposal written to the store: {key}" in out
    assert out.splitlines()[0] == f"{model} version 1 (in production since {since:%Y-%m-%d %H:%M} UTC)"
    assert [
        line.split()[:2]
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[0] in ("drift", "performance", "schedule")
    ] == [["drift", "ok"], ["performance", "FIRING"], ["schedule", "ok"]]
    assert spec_from_proposal(body).dataset_id.startswith(f"{model}-performance-")

    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    performance = {t["kind"]: t for t in data["models"][0]["triggers"]}["performance"]
    assert performance["firing"] and performance["proposal"] == key and data["models"][0]["proposals"] == []
    assert [k for k in store.list(f"monitoring/{model}/proposals") if k.endswith(".md")] == [key]

    assert main(["monitor", "check", "--model", "ghost"]) == 2
    assert capsys.readouterr().err == "Model ghost has no production version: there is nothing to check.\n"
    with pytest.raises(SystemExit):
        main(["monitor", "check", "--cooldown", "soon"])


# ---------------------------------------------------------------------- the proposal's spec


def test_a_proposal_spec_is_refused_when_it_is_no_proposal_or_names_another_model():
    body = "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
    with pytest.raises(InvalidInput, match="not a retraining proposal"):
        spec_from_proposal(body)
    marked = (
        "<!-- issueops:retrain-proposal model=churn trigger=drift -->\n```yaml\n"
        + body
        + "model_name: other\n```\n"
    )
    with pytest.raises(InvalidInput, match="put model_name: churn back"):
        spec_from_proposal(marked)
    assert spec_from_proposal(marked.replace("other", "churn")).dataset_id == "sklearn:iris"


def test_a_proposal_with_evidence_too_long_for_an_issue_is_cut_and_its_spec_still_reads():
    rows = "".join(f"| feature_é{i} | ks | {'9' * 200} | p = 0.001 | 0.05 | **yes** |\n" for i in range(600))
    proposal = Proposal(
        model="churn", trigger="drift", version=3, title="t", summary="Drift.", production_since="then",
        evidence="| feature | test | statistic | p | threshold | drift |\n|---|---|---|---|---|---|\n" + rows,
        spec={"learning_type": "supervised", "algorithm": "xgboost", "dataset_id": "sklearn:iris", "model_name": "churn"},
    )  # fmt: skip
    body = render_body(proposal)
    assert len(body.encode()) <= 60_000 and "cut to fit the issue" in body
    assert spec_from_proposal(body).algorithm == "xgboost"


@pytest.mark.parametrize("value", ["7 days", 7, "0d", "400d", "1.5h", ""])
def test_retrain_every_is_a_duration_of_whole_hours_days_or_weeks(value):
    base = {"learning_type": "supervised", "algorithm": "random_forest", "dataset_id": "sklearn:iris"}
    assert validate_spec({**base, "retrain_every": "2w"}).retrain_every == "2w"
    with pytest.raises(SpecError, match="retrain_every must be a duration"):
        validate_spec({**base, "retrain_every": value})


# ---------------------------------------------------------------------- the receiver


def test_the_receiver_writes_what_a_kserve_logger_posts(tmp_path):
    from issueops.bridge.webhook import HttpServer
    from issueops.monitoring.receiver import make_receiver_app
    from issueops.store import LocalStore

    store = LocalStore(tmp_path / "store")
    logger = PayloadLogger(store)
    request = {"inputs": v2_tensors({"input": np.array([[41.0, 2500.0]], dtype=np.float32)})}
    response = {"model_name": "churn", "model_version": "3", "outputs": v2_tensors({"label": np.array([1])})}
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "req-1",
        "ce-source": "http://localhost:9081/",
        "ce-inferenceservicename": "churn",
        "ce-namespace": "issueops",
        "ce-component": "predictor",
        "ce-endpoint": "default",
        "ce-annotations": json.dumps({"issueops.io/version": "3"}),
        "content-type": "application/json",
    }
    posts = [("/", "request", request), ("/events", "response", response)]
    with HttpServer(make_receiver_app(logger)) as server:
        answers = [
            httpx.post(
                f"{server.url}{path}",
                content=json.dumps(body),
                headers={**headers, "ce-type": f"org.kubeflow.serving.inference.{kind}"},
            )
            for path, kind, body in posts
        ]
        refused = httpx.post(f"{server.url}/", content=b"{}", headers={"ce-type": "x"})
        health = httpx.get(f"{server.url}/healthz")
    logger.close()
    assert [a.status_code for a in answers] == [202, 202] and health.status_code == 200
    assert refused.status_code == 400 and "lacks id" in refused.json()["message"]
    log = read_inference_log(store, "churn", 3)
    assert log.rows == 1 and list(log.keys["request_id"]) == ["req-1"]
    assert log.features.iloc[0].tolist() == [41.0, 2500.0]
