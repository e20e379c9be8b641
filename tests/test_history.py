"""Training history: markdown per run, one commit per run, to a real git repo and to GitHub."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from issueops.config import Settings
from issueops.errors import ExternalServiceError
from issueops.github import GitHubClient, RetryPolicy
from issueops.reporting.history import history_stem, render_history, write_history
from issueops.results import RunResult, StepTiming

try:
    from tests.github_double import GitHubDouble
except ModuleNotFoundError:  # pytest put tests/ on sys.path, not the repository root
    from github_double import GitHubDouble

TOKEN = "issueops-history-credential-5e6f7a8b"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64))


def run_result(tmp_path: Path, **changes) -> RunResult:
    plots = tmp_path / "evaluation"
    plots.mkdir(exist_ok=True)
    (plots / "confusion_matrix.png").write_bytes(PNG)
    (plots / "roc curve.png").write_bytes(PNG[::-1])
    values = dict(
        run_id="run-7",
        spec={
            "learning_type": "supervised",
            "algorithm": "random_forest",
            "dataset_id": "sklearn:breast_cancer",
            "hyperparameters": {"n_estimators": 100, "max_depth": 10},
            "evaluation_threshold": 0.85,
        },
        decision="pass",
        message="accuracy 0.9561 ≥ threshold 0.85",
        evaluation_metric="accuracy",
        threshold=0.85,
        metric_value=0.95614,
        metrics={"accuracy": 0.95614, "f1": 0.9612, "roc_auc": 0.99},
        data_summary={"rows": 569, "features": 30, "classes": {"0": 212, "1": 357}},
        artifacts={
            "model": "s3://bucket/models/run-7/model.onnx",
            "confusion_matrix.png": str(plots / "confusion_matrix.png"),
            "roc curve.png": str(plots / "roc curve.png"),
        },
        issue=12,
        repository="octo-org/models",
        attempt=2,
        model_name="breast-cancer-rf",
        model_version="4",
        alias="production",
        endpoint="http://127.0.0.1:8080/v2/models/breast-cancer-rf/infer",
        started_at="2025-03-04T05:06:07+00:00",
        finished_at="2025-03-04T05:09:00+00:00",
        steps=[StepTiming("train", "done", 12.5), StepTiming("deploy", "skipped")],
    )
    values.update(changes)
    return RunResult(**values)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------- rendering


def test_file_name_carries_start_time_and_issue(tmp_path):
    assert history_stem(run_result(tmp_path)) == "train-20250304-050607-12"
    local = run_result(tmp_path, issue=None, started_at="2025-03-04T07:06:07+02:00")
    assert history_stem(local) == "train-20250304-050607-local"
    assert re.fullmatch(
        r"train-\d{8}-\d{6}-local", history_stem(run_result(tmp_path, issue=None, started_at=None))
    )


def test_rendered_history_has_every_section(tmp_path):
    result = run_result(tmp_path)
    plots = {"confusion_matrix.png": "train-x/confusion_matrix.png"}
    text = render_history(result, plots=plots)
    assert text.startswith("# Training run run-7\n")
    for heading in ("Decision", "Spec", "Data", "Metrics", "Model", "Steps", "Links", "Plots"):
        assert f"\n## {heading}\n" in text
    assert "**✅ pass** — accuracy 0.9561 ≥ threshold 0.85" in text
    assert (
        "```yaml\nlearning_type: supervised\n" in text
        and "  max_depth: 10\nevaluation_threshold: 0.85\n```" in text
    )
    assert "| **accuracy** | **0.9561** | 0.85 |" in text and "| roc_auc | 0.99 | |" in text
    assert "| classes | 0: 212, 1: 357 |" in text
    assert "| Version | 4 |" in text and "| Alias | `production` |" in text
    assert "[octo-org/models#12](https://github.com/octo-org/models/issues/12)" in text
    assert "![confusion_matrix.png](train-x/confusion_matrix.png)" in text
    assert "- model: [s3://bucket/models/run-7/model.onnx]" in text
    assert "| train | done | 12.5 s |" in text


# ---------------------------------------------------------------------- local git repository


def test_local_history_is_one_commit_per_run_with_plots_beside_it(tmp_path):
    settings = Settings(home=tmp_path, history_repo=tmp_path / "history")
    first = write_history(run_result(tmp_path), settings=settings)
    second = write_history(
        run_result(tmp_path, issue=None, run_id="run-8", started_at="2025-03-05T00:00:00Z"),
        settings=settings,
    )
    repo = tmp_path / "history"

    assert first.path == "training_history/train-20250304-050607-12.md"
    assert second.path == "training_history/train-20250305-000000-local.md"
    assert git(repo, "log", "--format=%H %an <%ae>").splitlines() == [
        f"{second.commit_sha} issueops <issueops@localhost>",
        f"{first.commit_sha} issueops <issueops@localhost>",
    ]
    changed = git(repo, "show", "--name-only", "--format=", first.commit_sha).splitlines()
    assert sorted(changed) == [
        "training_history/train-20250304-050607-12.md",
        "training_history/train-20250304-050607-12/confusion_matrix.png",
        "training_history/train-20250304-050607-12/roc_curve.png",
    ]
    folder = repo / "training_history/train-20250304-050607-12"
    assert (folder / "confusion_matrix.png").read_bytes() == PNG
    assert (folder / "roc_curve.png").read_bytes() == PNG[::-1]
    markdown = (repo / first.path).read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (repo / "training_history" / link).is_file(), f"{link} resolves next to the file"
    assert first.url == (repo / first.path).resolve().as_uri()
    assert git(repo, "status", "--porcelain") == ""


def test_local_history_leaves_the_users_own_work_alone(tmp_path):
    repo = tmp_path / "history"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "notes.md").write_text("work in progress\n")
    git(repo, "add", "notes.md")

    record = write_history(run_result(tmp_path), settings=Settings(home=tmp_path, history_repo=repo))
    assert "notes.md" not in git(repo, "show", "--name-only", "--format=", record.commit_sha)
    assert git(repo, "diff", "--cached", "--name-only") == "notes.md", "still staged, uncommitted"


def test_local_history_never_overwrites_an_earlier_run(tmp_path):
    settings = Settings(home=tmp_path, history_repo=tmp_path / "history")
    first = write_history(run_result(tmp_path), settings=settings)
    again = write_history(run_result(tmp_path, run_id="run-7b"), settings=settings)
    assert again.path == "training_history/train-20250304-050607-12-2.md"
    repo = tmp_path / "history"
    assert "run-7b" not in (repo / first.path).read_text()
    assert "(train-20250304-050607-12-2/confusion_matrix.png)" in (repo / again.path).read_text()


def test_a_failed_local_commit_leaves_nothing_behind(tmp_path):
    settings = Settings(home=tmp_path, history_repo=tmp_path / "history")
    first = write_history(run_result(tmp_path), settings=settings)
    repo = tmp_path / "history"
    lock = repo / ".git" / "index.lock"
    lock.write_text("")  # another git process holds the index
    later = run_result(tmp_path, run_id="run-8", started_at="2025-03-05T00:00:00Z")
    with pytest.raises(ExternalServiceError, match="could not write the training history"):
        write_history(later, settings=settings)
    lock.unlink()
    assert git(repo, "rev-parse", "HEAD") == first.commit_sha
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


# ---------------------------------------------------------------------- GitHub repository


@pytest.fixture
def gh():
    with GitHubDouble(token=TOKEN) as double:
        yield double


@pytest.fixture
def client(gh):
    client = GitHubClient(
        TOKEN,
        gh.full_name,
        api_url=gh.url,
        retry=RetryPolicy(attempts=3, backoff=0.01, max_wait=0.5),
        throttle=False,
    )
    yield client
    client.close()


def test_github_history_is_one_commit_with_the_plots(gh, client, tmp_path):
    before = gh.log()
    record = write_history(run_result(tmp_path), settings=Settings(home=tmp_path), github=client)
    log = gh.log()
    assert len(log) == len(before) + 1 and log[0].sha == record.commit_sha
    files = gh.files()
    stem = "training_history/train-20250304-050607-12"
    assert record.path == f"{stem}.md"
    assert files[f"{stem}/confusion_matrix.png"] == PNG
    assert files[f"{stem}/roc_curve.png"] == PNG[::-1]
    assert "![confusion_matrix.png](train-20250304-050607-12/confusion_matrix.png)" in (
        files[f"{stem}.md"].decode()
    )
    assert record.url == f"https://github.com/octo-org/models/blob/{record.commit_sha}/{stem}.md"

    again = write_history(
        run_result(tmp_path, run_id="run-9"), settings=Settings(home=tmp_path), github=client
    )
    assert again.path == f"{stem}-2.md" and b"run-9" not in gh.files()[f"{stem}.md"]


def test_github_history_links_only_what_a_reader_can_open_and_shows_its_own_step_done(gh, client, tmp_path):
    """Read on GitHub, a path on the machine that ran the step means nothing, and the history is
    written by write_history itself: the step cannot still be running when it is read."""
    local = tmp_path / "store" / "models" / "run-7"
    result = run_result(
        tmp_path,
        artifacts={
            **run_result(tmp_path).artifacts,
            "processed": local.as_uri(),
            "evaluation": str(tmp_path / "store" / "evaluations" / "run-7" / "results.json"),
        },
        steps=[StepTiming("train", "done", 12.5), StepTiming("write_history", "running")],
    )
    record = write_history(result, settings=Settings(home=tmp_path), github=client)
    text = gh.files()[record.path].decode()
    assert str(tmp_path) not in text and "file://" not in text
    assert "s3://bucket/models/run-7/model.onnx" in text  # where the team's store has the model
    assert "| write_history | this commit | — |" in text and "running" not in text
    local_text = render_history(result)  # the local history repository sits beside the store
    assert local.as_uri() in local_text


def test_github_history_branch_comes_from_the_environment(gh, client, tmp_path, monkeypatch):
    monkeypatch.setenv("ISSUEOPS_HISTORY_BRANCH", "training-history")
    main = gh.state.branches["main"]
    record = write_history(run_result(tmp_path), settings=Settings(home=tmp_path), github=client)
    assert gh.state.branches["main"] == main, "main untouched"
    assert gh.state.branches["training-history"] == record.commit_sha
    assert gh.log("training-history")[1].sha == main, "the new branch starts from main"


def test_github_history_survives_a_5xx_and_a_moving_branch(gh, client, tmp_path):
    before = len(gh.log())
    gh.inject("POST /repos/{owner}/{repo}/git/blobs", 502, times=1)
    gh.inject("PATCH /repos/{owner}/{repo}/git/refs/{ref}", 422, times=1)
    record = write_history(run_result(tmp_path), settings=Settings(home=tmp_path), github=client)
    assert len(gh.log()) == before + 1 and gh.log()[0].sha == record.commit_sha
    assert len(gh.calls("PATCH /repos/{owner}/{repo}/git/refs/{ref}")) == 2


@pytest.mark.parametrize(
    "route, fault, transient",
    [
        ("POST /repos/{owner}/{repo}/git/trees", 403, False),
        ("POST /repos/{owner}/{repo}/git/commits", 502, True),
        ("PATCH /repos/{owner}/{repo}/git/refs/{ref}", 409, False),
        ("POST /repos/{owner}/{repo}/git/blobs", "rate_limit", True),
    ],
)
def test_a_failed_github_write_changes_nothing(gh, client, tmp_path, route, fault, transient):
    head, files = gh.state.branches["main"], gh.files()
    gh.inject(route, fault, times=20, retry_after=0)
    with pytest.raises(ExternalServiceError) as raised:
        write_history(run_result(tmp_path), settings=Settings(home=tmp_path), github=client)
    assert "could not write the training history to octo-org/models@main" in str(raised.value)
    assert raised.value.transient is transient
    assert gh.state.branches["main"] == head and gh.files() == files
