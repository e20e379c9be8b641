"""The GitHub client, the status comment and the GitHub double, over real HTTP on loopback."""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import logging
from datetime import UTC
from pathlib import Path

import httpx
import jsonschema
import pytest

from issueops.config import Settings
from issueops.errors import (
    Conflict,
    ExternalServiceError,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from issueops.github import GitHubClient, RetryPolicy, html_base_url
from issueops.reporting.status import (
    STATUS_MARKER,
    ConsoleSink,
    GitHubCommentSink,
    StatusReport,
    format_seconds,
    format_value,
    render_result_table,
    render_status,
    render_step,
)
from issueops.results import RunResult, StepTiming

try:
    from tests.github_double import GitHubDouble, git_blob_sha
    from tests.octokit import octokit_file
except ModuleNotFoundError:  # pytest put tests/ on sys.path, not the repository root
    from github_double import GitHubDouble, git_blob_sha
    from octokit import octokit_file

# Not shaped like a GitHub token, so only issueops' own registration can mask it.
TOKEN = "issueops-test-credential-7f3a9c1e5b"
FAST = RetryPolicy(attempts=3, backoff=0.01, max_wait=0.5)
DATA = Path(__file__).parent / "data" / "github"
ISSUE = "/repos/{owner}/{repo}/issues/{issue_number}"


@pytest.fixture
def gh():
    with GitHubDouble(token=TOKEN) as double:
        yield double


def make_client(gh: GitHubDouble, **options) -> GitHubClient:
    settings = dict(api_url=gh.url, retry=FAST, timeout=2, throttle=False)
    settings.update(options)
    return GitHubClient(TOKEN, gh.full_name, **settings)


@pytest.fixture
def client(gh):
    client = make_client(gh)
    yield client
    client.close()


def run_result(**changes) -> RunResult:
    values = dict(
        run_id="run-42",
        spec={"algorithm": "random_forest", "hyperparameters": {"n_estimators": 100}},
        decision="pass",
        message="accuracy 0.9561 reached the threshold 0.85",
        evaluation_metric="accuracy",
        threshold=0.85,
        metric_value=0.95614,
        metrics={"accuracy": 0.95614, "f1": 0.9612},
        issue=1,
        repository="octo-org/models",
        model_name="breast-cancer-rf",
        model_version="3",
        alias="production",
        endpoint="http://127.0.0.1:8080/v2/models/breast-cancer-rf/infer",
    )
    values.update(changes)
    return RunResult(**values)


# ---------------------------------------------------------------------- the double's wire format


def _load_extract_module():
    spec = importlib.util.spec_from_file_location("extract_openapi", DATA / "extract_openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schemas(source: str) -> dict:
    module = _load_extract_module()
    if source == "committed extract":
        data = json.loads(module.EXTRACT.read_text())
    else:
        full = octokit_file("@octokit/openapi", "package/generated/api.github.com.json")
        data = module.extract(json.loads(full.read_text()))
    return {
        "components": module.to_json_schema(data["components"]),
        "responses": {k: module.to_json_schema(v) for k, v in data["responses"].items()},
    }


def _exercise_every_route(gh: GitHubDouble) -> dict[str, httpx.Response]:
    """One real answer of the double for every documented response we rely on."""
    issue = gh.create_issue("Train a model", body="algorithm: svm", labels=["mlops:train"])
    gh.add_comment(issue, "first", user="alice")
    gh.add_user("mo", role="maintain")
    http = httpx.Client(base_url=gh.url, headers={"Authorization": f"token {TOKEN}"})
    r = f"/repos/{gh.full_name}"
    b64 = base64.b64encode(b"# history\n").decode()
    out: dict[str, httpx.Response] = {}

    def keep(method: str, template: str, response: httpx.Response) -> httpx.Response:
        out[f"{method} {template} {response.status_code}"] = response
        return response

    R = "/repos/{owner}/{repo}"
    keep("GET", "/rate_limit", http.get("/rate_limit"))
    keep("GET", R, http.get(r))
    keep("GET", f"{R}/issues", http.get(f"{r}/issues", params={"labels": "mlops:train"}))
    keep("POST", f"{R}/issues", http.post(f"{r}/issues", json={"title": "Another"}))
    keep("GET", ISSUE, http.get(f"{r}/issues/{issue}"))
    keep("GET", ISSUE, http.get(f"{r}/issues/999"))
    keep("GET", f"{ISSUE}/comments", http.get(f"{r}/issues/{issue}/comments"))
    posted = keep("POST", f"{ISSUE}/comments", http.post(f"{r}/issues/{issue}/comments", json={"body": "x"}))
    comment = f"{r}/issues/comments/{posted.json()['id']}"
    C = f"{R}/issues/comments/{{comment_id}}"
    keep("GET", C, http.get(comment))
    keep("PATCH", C, http.patch(comment, json={"body": "edited"}))
    keep("PATCH", C, http.patch(comment, json={"body": "x" * 70000}))
    keep("GET", f"{ISSUE}/labels", http.get(f"{r}/issues/{issue}/labels"))
    keep("POST", f"{ISSUE}/labels", http.post(f"{r}/issues/{issue}/labels", json=["mlops:run"]))
    P = f"{R}/collaborators/{{username}}/permission"
    keep("GET", P, http.get(f"{r}/collaborators/mo/permission"))
    F = f"{R}/contents/{{path}}"
    path = f"{r}/contents/training_history/a.md"
    keep("GET", F, http.get(f"{path}", params={"ref": "main"}))  # 404: not there yet
    created = keep("PUT", F, http.put(path, json={"message": "add", "content": b64}))
    sha = created.json()["content"]["sha"]
    keep("PUT", F, http.put(path, json={"message": "edit", "content": b64, "sha": sha}))
    keep("PUT", F, http.put(path, json={"message": "stale", "content": b64, "sha": "0" * 40}))
    keep("PUT", F, http.put(path, json={"message": "no sha", "content": b64}))
    keep("GET", F, http.get(path))
    head = gh.state.branches["main"]
    keep("GET", f"{R}/commits/{{ref}}", http.get(f"{r}/commits/{head}"))
    keep("GET", f"{R}/branches/{{branch}}", http.get(f"{r}/branches/main"))
    keep("GET", f"{R}/git/ref/{{ref}}", http.get(f"{r}/git/ref/heads/main"))
    keep(
        "POST",
        f"{R}/git/refs",
        http.post(f"{r}/git/refs", json={"ref": "refs/heads/h", "sha": head}),
    )
    keep("GET", f"{R}/git/commits/{{commit_sha}}", http.get(f"{r}/git/commits/{head}"))
    blob = keep(
        "POST",
        f"{R}/git/blobs",
        http.post(f"{r}/git/blobs", json={"content": b64, "encoding": "base64"}),
    )
    tree_body = {
        "base_tree": gh.state.commits[head].tree,
        "tree": [{"path": "b.md", "mode": "100644", "type": "blob", "sha": blob.json()["sha"]}],
    }
    tree = keep("POST", f"{R}/git/trees", http.post(f"{r}/git/trees", json=tree_body))
    commit_body = {"message": "m", "tree": tree.json()["sha"], "parents": [head]}
    commit = keep("POST", f"{R}/git/commits", http.post(f"{r}/git/commits", json=commit_body))
    G = f"{R}/git/refs/{{ref}}"
    keep("PATCH", G, http.patch(f"{r}/git/refs/heads/h", json={"sha": commit.json()["sha"]}))
    keep("PATCH", G, http.patch(f"{r}/git/refs/heads/h", json={"sha": head}))  # not a fast forward
    http.close()
    return out


@pytest.mark.parametrize("source", ["committed extract", "full description"])
def test_double_answers_match_githubs_openapi_description(gh, source):
    schemas = _schemas(source)
    answers = _exercise_every_route(gh)
    assert set(answers) == set(schemas["responses"]), "every documented response is exercised"
    for key, response in answers.items():
        schema = {"components": schemas["components"], **schemas["responses"][key]}
        validator = jsonschema.Draft202012Validator(schema)
        problems = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(response.json())
        ]
        assert not problems, f"{key}: {problems[:5]}"


def test_extract_is_small_and_names_its_source():
    extract = DATA / "openapi-responses.json"
    assert extract.stat().st_size < 500_000
    assert json.loads(extract.read_text())["source"].startswith("@octokit/openapi")


def test_double_supports_conditional_requests_pagination_and_rate_headers(gh):
    issue = gh.create_issue("t")
    for n in range(5):
        gh.add_comment(issue, f"comment {n}")
    url = f"{gh.url}/repos/{gh.full_name}/issues/{issue}/comments"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = httpx.get(url, params={"per_page": 2}, headers=auth)
    assert [c["body"] for c in first.json()] == ["comment 0", "comment 1"]
    assert 'rel="next"' in first.headers["Link"] and 'rel="last"' in first.headers["Link"]
    remaining = int(first.headers["X-RateLimit-Remaining"])

    again = httpx.get(url, params={"per_page": 2}, headers={**auth, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assert int(again.headers["X-RateLimit-Remaining"]) == remaining  # 304s are free

    gh.add_comment(issue, "new")
    changed = httpx.get(
        url,
        params={"per_page": 2, "page": 3},
        headers={**auth, "If-None-Match": first.headers["ETag"]},
    )
    assert changed.status_code == 200 and [c["body"] for c in changed.json()] == [
        "comment 4",
        "new",
    ]
    assert 'rel="prev"' in changed.headers["Link"] and 'rel="next"' not in changed.headers["Link"]

    assert httpx.get(url, headers={"Authorization": "token wrong"}).status_code == 401


def test_double_rejects_unknown_faults_and_routes(gh):
    with pytest.raises(AssertionError):
        gh.inject("GET /repos/{owner}/{repo}/nothing", 502)
    with pytest.raises(AssertionError):
        gh.inject(f"GET {ISSUE}", 418)


# ---------------------------------------------------------------------- issues and comments


def test_get_issue_and_list_labelled_issues_since(gh, client):
    old = gh.create_issue("Old request", body="algorithm: svm", labels=["mlops:train"])
    gh.create_issue("Unrelated", labels=["bug"])
    gh.advance(120)
    since = gh.now()
    new = gh.create_issue(
        "New request", body="algorithm: xgboost", labels=["mlops:train", "p1"], user="alice"
    )
    closed = gh.create_issue("Closed request", labels=["mlops:train"])
    gh.state.issues[closed].state = "closed"

    issue = client.get_issue(new)
    assert (issue.title, issue.body, issue.author) == ("New request", "algorithm: xgboost", "alice")
    assert issue.labels == ("mlops:train", "p1")
    assert issue.html_url.endswith(f"/octo-org/models/issues/{new}")

    assert {i.number for i in client.list_labelled_issues("mlops:train")} == {old, new}
    assert [i.number for i in client.list_labelled_issues("mlops:train", since)] == [new]
    # A naive datetime is taken as UTC, like GitHub's own timestamps.
    naive = since.astimezone(UTC).replace(tzinfo=None)
    assert [i.number for i in client.list_labelled_issues("mlops:train", naive)] == [new]


def test_list_comments_follows_pagination_and_since(gh):
    issue = gh.create_issue("t")
    for n in range(5):
        gh.add_comment(issue, f"comment {n}", user="alice")
    gh.advance(60)
    cut = gh.now()
    late = gh.add_comment(issue, "adjusted_hyperparameters:\n  max_depth: 4", user="mo")
    client = make_client(gh, per_page=2)

    comments = client.list_comments(issue)
    assert [c.body for c in comments][:5] == [f"comment {n}" for n in range(5)]
    assert len(comments) == 6
    pages = gh.calls(f"GET {ISSUE}/comments")
    assert len(pages) == 3, "followed the Link header over three pages of two"

    recent = client.list_comments(issue, since=cut)
    assert [(c.id, c.author) for c in recent] == [(late, "mo")]


def test_post_edit_comment_and_labels(gh, client):
    issue = gh.create_issue("t")
    comment_id, url = client.post_comment(issue, "first")
    assert url.endswith(f"#issuecomment-{comment_id}")
    client.edit_comment(comment_id, "second")
    client.add_labels(issue, ["mlops:running", "mlops:train"])
    [comment] = gh.comments_on(issue)
    assert (comment.id, comment.body, comment.user) == (comment_id, "second", "issueops-bot")
    assert gh.state.issues[issue].labels == ["mlops:running", "mlops:train"]
    with pytest.raises(NotFound):
        client.edit_comment(999999, "x")


# ---------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    "role, steers",
    [
        ("admin", True),
        ("maintain", True),
        ("write", True),
        ("triage", False),
        ("read", False),
        ("none", False),
    ],
)
def test_permission_levels_and_who_can_steer(gh, client, role, steers):
    gh.add_user("dana", role=role)
    assert client.permission("dana") == role
    assert client.can_steer("dana") is steers
    assert client.can_steer("dana", allowlist=["Dana"]) is True


def test_unknown_user_cannot_steer(client):
    with pytest.raises(NotFound):
        client.permission("nobody-here")
    assert client.can_steer("nobody-here") is False


# ---------------------------------------------------------------------- files and commits


def test_commit_file_creates_then_updates_with_one_commit_each(gh, client):
    before = len(gh.log())
    sha1, url1 = client.commit_file("training_history/a.md", b"# one\n", "history: one")
    assert gh.files()["training_history/a.md"] == b"# one\n"
    sha2, url2 = client.commit_file("training_history/a.md", b"# two\n", "history: two")
    assert gh.files()["training_history/a.md"] == b"# two\n"
    log = gh.log()
    assert [c.sha for c in log[:2]] == [sha2, sha1] and len(log) == before + 2
    assert [c.message for c in log[:2]] == ["history: two", "history: one"]
    assert url2 == f"https://github.com/octo-org/models/blob/{sha2}/training_history/a.md"
    assert client.read_file("training_history/a.md") == b"# two\n"
    assert client.read_file("training_history/missing.md") is None


def test_commit_file_to_a_missing_branch_is_not_found(gh, client):
    with pytest.raises(NotFound):
        client.commit_file("x.md", b"x", "m", branch="nope")
    assert "x.md" not in gh.files()


def test_commit_file_rereads_a_stale_sha_once(gh, client):
    client.commit_file("a.md", b"one", "one")
    gh.inject("PUT /repos/{owner}/{repo}/contents/{path}", 409, times=1)
    client.commit_file("a.md", b"two", "two")
    assert gh.files()["a.md"] == b"two"
    assert len(gh.calls("PUT /repos/{owner}/{repo}/contents/{path}")) == 3

    head = gh.state.branches["main"]
    gh.inject("PUT /repos/{owner}/{repo}/contents/{path}", 409, times=2)
    with pytest.raises(Conflict, match="409"):
        client.commit_file("a.md", b"three", "three")
    assert gh.state.branches["main"] == head and gh.files()["a.md"] == b"two"


def test_commit_files_makes_one_commit_and_refuses_an_empty_one(gh, client):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    sha, url = client.commit_files({"h/a.md": b"# a\n", "h/a/plot.png": png}, "one commit")
    assert gh.log()[0].sha == sha and gh.log()[0].message == "one commit"
    assert gh.files()["h/a/plot.png"] == png
    assert gh.state.trees[gh.log()[0].tree]["h/a/plot.png"][1] == git_blob_sha(png)
    assert url == f"https://github.com/octo-org/models/commit/{sha}"
    with pytest.raises(InvalidInput):
        client.commit_files({}, "empty")


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    "fault, error, transient, calls",
    [
        (422, InvalidInput, None, 1),
        (404, NotFound, None, 1),
        (409, Conflict, None, 1),
        (403, Unauthorized, None, 1),
        (401, Unauthorized, None, 1),
        (502, ExternalServiceError, True, 3),
        (503, ExternalServiceError, True, 3),
        ("rate_limit", ExternalServiceError, True, 3),
        ("secondary_rate_limit", ExternalServiceError, True, 3),
        (429, ExternalServiceError, True, 3),
        ("disconnect", ExternalServiceError, True, 3),
    ],
)
def test_faults_become_issueops_errors_after_bounded_retries(gh, client, fault, error, transient, calls):
    issue = gh.create_issue("t")
    gh.inject(f"GET {ISSUE}", fault, times=10, retry_after=0)
    with pytest.raises(error) as raised:
        client.get_issue(issue)
    assert len(gh.calls(f"GET {ISSUE}")) == calls
    if transient is not None:
        assert raised.value.transient is transient
    assert f"issue #{issue}" in str(raised.value) and "octo-org/models" in str(raised.value)
    assert "Traceback" not in str(raised.value)


@pytest.mark.parametrize("fault", [502, "rate_limit", "secondary_rate_limit", "disconnect"])
def test_transient_faults_are_retried_until_success(gh, client, fault):
    issue = gh.create_issue("recovering")
    gh.inject(f"GET {ISSUE}", fault, times=2, retry_after=0)
    assert client.get_issue(issue).title == "recovering"
    assert len(gh.calls(f"GET {ISSUE}")) == 3


def test_rate_limit_longer_than_max_wait_gives_up_at_once(gh, client):
    issue = gh.create_issue("t")
    gh.inject(f"GET {ISSUE}", "secondary_rate_limit", times=5, retry_after=3600)
    with pytest.raises(ExternalServiceError) as raised:
        client.get_issue(issue)
    assert len(gh.calls(f"GET {ISSUE}")) == 1
    assert raised.value.transient and raised.value.retry_after == 3600
    assert "rate limit" in str(raised.value) and "3600 s" in str(raised.value)


def test_primary_rate_limit_reports_the_reset_time(gh, client):
    issue = gh.create_issue("t")
    gh.inject(f"GET {ISSUE}", "rate_limit", times=5, retry_after=900)
    with pytest.raises(ExternalServiceError) as raised:
        client.get_issue(issue)
    assert raised.value.status == 403 and 880 < raised.value.retry_after <= 900


def test_a_hanging_github_times_out(gh):
    issue = gh.create_issue("t")
    client = make_client(gh, timeout=1, retry=RetryPolicy(attempts=2, backoff=0.01))
    gh.inject(f"GET {ISSUE}", "hang", times=2, hang_seconds=10)
    with pytest.raises(ExternalServiceError, match="timed out") as raised:
        client.get_issue(issue)
    assert raised.value.transient and len(gh.calls(f"GET {ISSUE}")) == 2


def test_new_comments_are_not_resent_after_an_ambiguous_failure(gh, client):
    issue = gh.create_issue("t")
    route = f"POST {ISSUE}/comments"
    gh.inject(route, 502, times=1)
    with pytest.raises(ExternalServiceError):
        client.post_comment(issue, "once")
    assert len(gh.calls(route)) == 1

    # A rate-limited create was refused outright, so sending it again is safe.
    gh.inject(route, "secondary_rate_limit", times=1, retry_after=0)
    client.post_comment(issue, "once")
    assert len(gh.calls(route)) == 3 and len(gh.comments_on(issue)) == 1


def test_wrong_token_is_unauthorized_and_never_shown(gh):
    wrong = "issueops-wrong-credential-0a1b2c3d"
    client = GitHubClient(wrong, gh.full_name, api_url=gh.url, retry=FAST, throttle=False)
    with pytest.raises(Unauthorized, match="401") as raised:
        client.get_issue(1)
    assert wrong not in str(raised.value) and wrong not in repr(raised.value.args)


def test_token_never_appears_in_logs_output_or_errors(gh, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github")  # PyGithub sets its own level (INFO)
    issue = gh.create_issue("t")
    client = make_client(gh)
    client.post_comment(issue, "hello")
    client.permission("octo-org")
    client.commit_file("a.md", b"a", "a")
    gh.inject(f"GET {ISSUE}", 502, times=3)
    with pytest.raises(ExternalServiceError) as raised:
        client.get_issue(issue)
    gh.inject(f"GET {ISSUE}", 401, times=1)
    with pytest.raises(Unauthorized) as refused:
        client.get_issue(issue)
    out, err = capsys.readouterr()
    assert "retrying" in caplog.text, "the retries were logged"
    assert any(r.name.startswith("github") for r in caplog.records), "PyGithub logged at DEBUG"
    for text in (caplog.text, out, err, str(raised.value), str(refused.value)):
        assert TOKEN not in text


def test_from_settings(gh, tmp_path):
    settings = Settings(
        home=tmp_path, github_token=TOKEN, github_repository=gh.full_name, github_api_url=gh.url
    )
    client = GitHubClient.from_settings(settings, throttle=False, retry=FAST)
    assert client.repository == "octo-org/models" and client.default_branch() == "main"
    with pytest.raises(InvalidInput, match="GITHUB_TOKEN"):
        GitHubClient.from_settings(Settings(home=tmp_path, github_repository="a/b"))
    with pytest.raises(InvalidInput, match="owner/name"):
        GitHubClient(TOKEN, "just-a-name")


def test_html_base_url():
    assert html_base_url("https://api.github.com") == "https://github.com"
    assert html_base_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com"


# ---------------------------------------------------------------------- status comment


def test_step_lines_render_as_a_checklist():
    assert render_step(StepTiming("prepare_data", "done", 1.234)) == "- [x] prepare_data (1.2 s)"
    assert render_step(StepTiming("train", "pending")) == "- [ ] train"
    assert render_step(StepTiming("train", "running")) == "- [ ] train — running…"
    assert render_step(StepTiming("evaluate", "failed", 3.0)) == "- [ ] evaluate — **failed** (3 s)"
    assert render_step(StepTiming("deploy", "skipped")) == "- [ ] ~~deploy~~ — skipped"
    assert format_seconds(125) == "2 min 5 s" and format_seconds(7260) == "2 h 1 min"
    assert format_value(0.95614) == "0.9561" and format_value(None) == "—"
    assert format_value(12) == "12" and format_value(0.85) == "0.85"


def test_status_body_ends_with_the_result_table_and_links():
    steps = [StepTiming("train", "done", 2.0), StepTiming("judge", "done", 0.1)]
    result = run_result(decision="retrain", metric_value=0.71, message="below | threshold")
    body = render_status("Train breast-cancer-rf", steps, result=result, run_id="run-42")
    assert body.startswith(STATUS_MARKER + "\n\n### Train breast-cancer-rf\n")
    assert "**Finished** — 🔁 retrain · run `run-42`" in body
    assert "| accuracy | 0.85 | 0.71 | 🔁 retrain |" in body
    assert body.index("- [x] judge (0.1 s)") < body.index("| metric | threshold | value | decision |")
    assert "- endpoint: [http://127.0.0.1:8080/v2/models/breast-cancer-rf/infer]" in body
    table = render_result_table(run_result(evaluation_metric="r2|adj", threshold=None))
    assert "| r2\\|adj | — | 0.9561 | ✅ pass |" in table


def test_status_comment_is_one_comment_edited_in_place(gh, client):
    issue = gh.create_issue("Train a model")
    steps = ["prepare_data", "train", "evaluate", "judge"]
    ticks = itertools.count(0, 1.5)
    report = StatusReport(
        GitHubCommentSink(client, issue),
        "Train breast-cancer-rf",
        steps,
        run_id="run-42",
        clock=lambda: next(ticks),
    )
    report.start()
    for name in steps:
        report.step_started(name)
        report.step_finished(name)
    report.finish(run_result())

    [status] = gh.comments_on(issue)
    assert len(gh.calls("PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}")) == 9
    assert "- [x] prepare_data (1.5 s)" in status.body and "- [x] judge (1.5 s)" in status.body
    assert "| accuracy | 0.85 | 0.9561 | ✅ pass |" in status.body
    assert "**Finished** — ✅ pass" in status.body


def test_status_resumes_an_existing_comment(gh, client):
    issue = gh.create_issue("t")
    first = StatusReport(GitHubCommentSink(client, issue), "attempt 1", ["train"])
    first.start()
    comment_id = first.sink.comment_id
    second = StatusReport(GitHubCommentSink(client, issue, comment_id=comment_id), "attempt 2", ["train"])
    second.start()
    [only] = gh.comments_on(issue)
    assert only.id == comment_id and "attempt 2" in only.body


def test_a_github_outage_does_not_stop_the_run(gh, client, caplog):
    issue = gh.create_issue("t")
    report = StatusReport(GitHubCommentSink(client, issue), "t", ["train", "judge"])
    report.start()
    gh.inject("PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}", 502, times=3)
    report.step_started("train")  # three failed tries: logged, not raised
    assert "could not update the status" in caplog.text
    report.step_finished("train", seconds=2.0)
    [status] = gh.comments_on(issue)
    assert "- [x] train (2 s)" in status.body


def test_console_sink_logs_one_line_per_event(caplog):
    caplog.set_level(logging.INFO, logger="issueops.reporting.status")
    sink = ConsoleSink()
    report = StatusReport(sink, "local run", ["train"], clock=iter([0.0, 4.0]).__next__)
    report.start()
    report.step_started("train")
    report.step_finished("train")
    report.finish(run_result(issue=None, steps=[StepTiming("register", "skipped")]))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == [
        "local run: started (1 steps)",
        "train: running",
        "train: done in 4 s",
    ]
    assert "- [x] train (4 s)" in sink.last_body and "~~register~~ — skipped" in sink.last_body
