"""Issue 3's end-to-end: two passing runs, then a failing request, reported on a GitHub issue.

Real MLflow on SQLite, a real local git repository for history, the GitHub double for the issue,
and the CLI as a user runs it.
"""

import json

import pytest

from issueops.config import Settings
from issueops.registry.lifecycle import Registry
from issueops.reporting.status import STATUS_MARKER
from tests.github_double import GitHubDouble
from tests.notify_servers import WebhookReceiver
from tests.test_pipeline import cli

PASSING = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:breast_cancer\n"
    "model_name: cancer-rf\nhyperparameters: {{n_estimators: {trees}}}\nevaluation_threshold: 0.9\n"
)
FAILING = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:breast_cancer\n"
    "model_name: cancer-rf\nhyperparameters: {n_estimators: 1, max_depth: 1}\n"
    "evaluation_threshold: 0.999\nmax_retry: 0\n"
)
TOKEN = "ghp_" + "S3cr3tT0kenValue" * 2


@pytest.fixture
def github():
    with GitHubDouble(token=TOKEN) as double:
        yield double


def test_two_passes_then_a_failure_keeps_the_second_version(home, tmp_path, github):
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": github.full_name, "GITHUB_API_URL": github.url}
    results, issues = [], []
    for name, body in (
        ("first", PASSING.format(trees=50)),
        ("second", PASSING.format(trees=80)),
        ("bad", FAILING),
    ):
        issue = github.create_issue(f"Train {name}", body=body, labels=["mlops:train"])
        issues.append(issue)
        (tmp_path / f"{name}.yaml").write_text(body)
        done = cli("run", str(tmp_path / f"{name}.yaml"), "--json", "--issue", str(issue), home=home, env=env)
        assert done.returncode == (4 if name == "bad" else 0), done.stderr
        assert TOKEN not in done.stderr + done.stdout
        results.append(json.loads(done.stdout))

    assert [r["decision"] for r in results] == ["pass", "pass", "fail"]
    # Each later run was judged against the version in production then, on its own test split
    # (the failing stump also scores worse than it).
    assert results[0]["champion"] is None
    assert [(r["champion"]["version"], r["champion"]["lost"]) for r in results[1:]] == [
        (1, False),
        (2, True),
    ]
    assert all(r["warnings"] == [] for r in results)
    for log in (home / "logs").glob("*.log"):  # the runner's and every step's output
        assert TOKEN not in log.read_text()
    registry = Registry.from_settings(Settings.from_env())
    production = registry.production("cancer-rf")
    assert production.version == 2 and production.run_id == results[1]["run_id"]
    actions = [(a.action, a.from_version, a.to_version) for a in registry.history("cancer-rf")]
    assert ("promote", None, 1) in actions and ("promote", 1, 2) in actions
    assert not any(a[0] == "rollback" and a[2] != 2 for a in actions)  # the failure changed nothing

    # With GitHub configured, history is committed to the repository: one commit per run.
    files = github.files()
    history = sorted(p for p in files if p.startswith("training_history/train-") and p.endswith(".md"))
    assert len(history) == 3, sorted(files)
    assert {p.rsplit("-", 1)[1].removesuffix(".md") for p in history} == {str(i) for i in issues}
    assert "cancer-rf" in files[history[1]].decode()
    assert len([c for c in github.log() if "history: run" in c.message]) == 3

    for issue, result in zip(issues, results, strict=True):
        comments = [c.body for c in github.comments_on(issue)]
        status = [c for c in comments if STATUS_MARKER in c]
        assert len(status) == 1, comments  # edited in place, never one per step
        assert result["decision"] in status[0] and "- [x] judge" in status[0]
        assert ("| production v" in status[0]) is (result["champion"] is not None)
        assert len(comments) == 2  # the status comment and the final summary


def test_github_failing_while_committing_history_leaves_the_registry_right(home, tmp_path, github):
    """History cannot be committed: the run still passes, production is right, and the other
    channels (Slack here, and the issue) still hear of the run, told that history failed."""
    slack_path = "/services/T0001/B0002/history-outage"
    with WebhookReceiver() as slack:
        env = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_REPOSITORY": github.full_name,
            "GITHUB_API_URL": github.url,
            "ISSUEOPS_SLACK_WEBHOOK_URL": slack.url(slack_path),
        }
        github.inject("POST /repos/{owner}/{repo}/git/trees", 502, times=100)
        issue = github.create_issue("Train", labels=["mlops:train"])
        (tmp_path / "spec.yaml").write_text(PASSING.format(trees=30))
        done = cli("run", str(tmp_path / "spec.yaml"), "--json", "--issue", str(issue), home=home, env=env)
        (heard,) = slack.posts(slack_path)
    assert "Training succeeded" in heard.json["text"]
    assert "write_history failed" in heard.json["text"] and "training history" in heard.json["text"]
    summary = [c.body for c in github.comments_on(issue) if "issueops:notification" in c.body]
    assert len(summary) == 1 and "write_history failed" in summary[0]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "pass"
    assert any("write_history" in w and "502" in w for w in result["warnings"]), result["warnings"]
    assert "warning: step write_history failed" in done.stderr
    production = Registry.from_settings(Settings.from_env()).production("cancer-rf")
    assert production.version == 1 and production.run_id == result["run_id"]
    assert not [p for p in github.files() if p.startswith("training_history/")]
    assert TOKEN not in done.stderr + done.stdout


def test_a_version_waiting_for_manual_approval_says_so_with_the_command(home, tmp_path, github):
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": github.full_name, "GITHUB_API_URL": github.url}
    issue = github.create_issue("Train", labels=["mlops:train"])
    (tmp_path / "spec.yaml").write_text(PASSING.format(trees=30) + "manual_approval: true\n")
    done = cli("run", str(tmp_path / "spec.yaml"), "--json", "--issue", str(issue), home=home, env=env)
    assert done.returncode == 0, done.stderr
    assert Registry.from_settings(Settings.from_env()).production("cancer-rf") is None
    wanted = "Version 1 of `cancer-rf` waits for manual approval: comment `/approve 1` on issue"
    comments = [c.body for c in github.comments_on(issue)]
    (status,) = [c for c in comments if STATUS_MARKER in c]
    assert wanted in status and "`issueops registry approve cancer-rf 1`" in status
    assert "serving version" not in status and "no version in production yet" in status
    (told,) = [c for c in comments if "issueops:notification" in c]
    assert wanted in told
