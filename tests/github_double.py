"""A local stand-in for the GitHub REST API, for tests that cannot reach github.com.

It speaks the documented JSON of exactly the endpoints issueops calls (checked against
GitHub's OpenAPI description in tests/test_github.py), over real HTTP on loopback, so
PyGithub talks to it unchanged through `base_url`:

    @pytest.fixture
    def gh():
        with GitHubDouble(token="test-token") as double:   # owner/repo: octo-org/models
            yield double

    def test_something(gh):
        gh.add_user("alice", role="maintain")
        issue = gh.create_issue("Train", body="algorithm: svm", labels=["mlops:train"])
        client = GitHubClient("test-token", gh.full_name, api_url=gh.url, throttle=False)
        ...
        assert len(gh.comments_on(issue)) == 1

State (issues, comments, labels, git blobs/trees/commits, branches) lives in memory and is
inspectable: `comments_on`, `files(branch)`, `log(branch)`, `calls(route)`, `state`.
`inject(route, fault, times=N)` makes the next N calls to a route fail the way GitHub fails:
"rate_limit" (403, X-RateLimit-Remaining: 0), "secondary_rate_limit" (403, Retry-After),
401, 403, 404, 409, 422, 429, 5xx, "hang" or "disconnect". GET answers carry an ETag
(If-None-Match -> 304), lists a Link header (per_page/page), every answer X-RateLimit-*.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

DOCS = "https://docs.github.com/rest"
HTML_BASE = "https://github.com"
# role_name -> the legacy `permission` field GitHub returns beside it.
ROLE_TO_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
FAULTS = (
    "rate_limit",  # primary: 403, X-RateLimit-Remaining: 0, X-RateLimit-Reset
    "secondary_rate_limit",  # 403 with Retry-After
    "hang",  # no answer for `hang_seconds` (or until the double closes), then the socket drops
    "disconnect",  # the connection is closed without an answer
    401,
    403,
    404,
    409,
    422,
    429,
    500,
    502,
    503,
)


class ApiError(Exception):
    """Raised inside a handler: answered as GitHub's error JSON."""

    def __init__(self, status: int, message: str, errors: list[dict] | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


@dataclass
class Fault:
    route: str
    kind: str | int
    times: int
    retry_after: int = 1
    hang_seconds: float = 30.0
    applied: bool = False  # the request takes effect before the failure is answered


@dataclass
class Issue:
    number: int
    id: int
    title: str
    body: str | None
    user: str
    labels: list[str]
    state: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None


@dataclass
class Comment:
    id: int
    issue: int
    body: str
    user: str
    created_at: datetime
    updated_at: datetime


@dataclass
class Commit:
    sha: str
    tree: str
    parents: list[str]
    message: str
    author: dict[str, str]
    committer: dict[str, str]


@dataclass
class RequestRecord:
    method: str
    path: str
    route: str | None
    status: int
    body: Any = None


@dataclass
class _Route:
    method: str
    template: str
    pattern: re.Pattern
    handler: Callable[..., tuple[int, Any]]


def git_blob_sha(data: bytes) -> str:
    """The SHA git (and GitHub's contents API) gives a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _parse_iso(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise ApiError(422, "Validation Failed", [{"field": "since", "code": "invalid"}]) from None


def _template_regex(template: str) -> re.Pattern:
    def group(match: re.Match) -> str:
        name = match.group(1)
        if name in ("path", "ref"):
            return f"(?P<{name}>.+)"
        if name in ("issue_number", "comment_id"):
            return f"(?P<{name}>[0-9]+)"
        return f"(?P<{name}>[^/]+)"

    return re.compile("^" + re.sub(r"\{(\w+)\}", group, template) + "$")


@dataclass
class _State:
    owner: str
    name: str
    default_branch: str
    bot: str
    users: dict[str, int] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    trees: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


def user_payload(
    login: str, ident: int, *, api_url: str, node_id: str, html_base: str = "https://github.com", kind="User"
) -> dict:
    """A GitHub simple-user object, as the REST API and webhook payloads carry it."""
    return {
        "login": login,
        "id": ident,
        "node_id": node_id,
        "avatar_url": f"https://avatars.githubusercontent.com/u/{ident}?v=4",
        "gravatar_id": "",
        "url": api_url,
        "html_url": f"{html_base}/{login}",
        "followers_url": f"{api_url}/followers",
        "following_url": f"{api_url}/following{{/other_user}}",
        "gists_url": f"{api_url}/gists{{/gist_id}}",
        "starred_url": f"{api_url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api_url}/subscriptions",
        "organizations_url": f"{api_url}/orgs",
        "repos_url": f"{api_url}/repos",
        "events_url": f"{api_url}/events{{/privacy}}",
        "received_events_url": f"{api_url}/received_events",
        "type": kind,
        "user_view_type": "public",
        "site_admin": False,
    }


class GitHubDouble:
    """A threaded loopback server speaking GitHub's REST API for one repository."""

    def __init__(
        self,
        *,
        owner: str = "octo-org",
        repo: str = "models",
        token: str | None = None,
        bot: str = "issueops-bot",
        default_branch: str = "main",
        rate_limit: int = 5000,
    ):
        self.token = token
        self.rate_limit = rate_limit
        self.rate_used = 0
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._ids = itertools.count(1001)
        self._clock_offset = timedelta(0)
        self.state = _State(owner=owner, name=repo, default_branch=default_branch, bot=bot)
        self.add_user(owner, role="admin")
        self.add_user(bot, role="write")
        self._routes = self._build_routes()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._init_repository()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GitHubDouble:
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GitHubDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The base_url to give PyGithub (no trailing slash)."""
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def full_name(self) -> str:
        return f"{self.state.owner}/{self.state.name}"

    # ------------------------------------------------------------------ test setup

    def now(self) -> datetime:
        return (datetime.now(UTC) + self._clock_offset).replace(microsecond=0)

    def advance(self, seconds: float) -> None:
        """Move the double's clock forward (timestamps have GitHub's one-second resolution)."""
        self._clock_offset += timedelta(seconds=seconds)

    def add_user(self, login: str, *, role: str | None = None) -> None:
        """Make `login` a GitHub user; with `role`, a collaborator with that role_name."""
        with self._lock:
            self.state.users.setdefault(login, next(self._ids))
            if role is not None:
                assert role in ROLE_TO_PERMISSION, role
                self.state.roles[login] = role

    def create_issue(self, title: str, *, body: str | None = None, labels=(), user: str | None = None) -> int:
        with self._lock:
            user = user or self.state.owner
            self.add_user(user)
            for label in labels:
                self._label_id(label)
            number = max(self.state.issues, default=0) + 1
            moment = self.now()
            self.state.issues[number] = Issue(
                number, next(self._ids), title, body, user, list(labels), "open", moment, moment
            )
            return number

    def add_comment(self, issue: int, body: str, *, user: str | None = None) -> int:
        with self._lock:
            user = user or self.state.owner
            self.add_user(user)
            moment = self.now()
            comment = Comment(next(self._ids), issue, body, user, moment, moment)
            self.state.comments[comment.id] = comment
            self.state.issues[issue].updated_at = moment
            return comment.id

    def inject(
        self,
        route: str,
        fault: str | int,
        *,
        times: int = 1,
        retry_after: int = 1,
        hang_seconds: float = 30.0,
        applied: bool = False,
    ) -> None:
        """Make the next `times` calls to `route` fail.

        `route` is "METHOD /template" as GitHub documents it, e.g.
        "PUT /repos/{owner}/{repo}/contents/{path}", or "*" for every route. `applied=True`:
        GitHub did what was asked and the answer still failed (a 502 after the issue was opened),
        for an HTTP status fault.
        """
        assert not applied or isinstance(fault, int), "applied goes with an HTTP status fault"
        assert fault in FAULTS, f"unknown fault {fault!r}; one of {FAULTS}"
        if route != "*":
            method, _, template = route.partition(" ")
            known = {(r.method, r.template) for r in self._routes}
            assert (method, template) in known, f"the double has no route {route!r}"
        with self._lock:
            self._faults.append(Fault(route, fault, times, retry_after, hang_seconds, applied))

    def heal(self) -> None:
        """Forget every injected fault that has not happened yet: GitHub is back."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------------ inspection

    def comments_on(self, issue: int) -> list[Comment]:
        with self._lock:
            return sorted((c for c in self.state.comments.values() if c.issue == issue), key=lambda c: c.id)

    def files(self, branch: str | None = None) -> dict[str, bytes]:
        """Every file at the head of `branch` (default branch when None)."""
        with self._lock:
            head = self.state.branches[branch or self.state.default_branch]
            tree = self.state.trees[self.state.commits[head].tree]
            return {path: self.state.blobs[sha] for path, (_mode, sha) in tree.items()}

    def log(self, branch: str | None = None) -> list[Commit]:
        """Commits reachable from `branch` along first parents, newest first."""
        with self._lock:
            sha: str | None = self.state.branches[branch or self.state.default_branch]
            out = []
            while sha:
                commit = self.state.commits[sha]
                out.append(commit)
                sha = commit.parents[0] if commit.parents else None
            return out

    def calls(self, route: str) -> list[RequestRecord]:
        """Requests that matched `route` ("METHOD /template"), in order."""
        with self._lock:
            return [r for r in self.requests if r.route == route]

    # ------------------------------------------------------------------ JSON shapes

    def _api(self, path: str) -> str:
        return f"{self.url}{path}"

    def _repo_api(self, suffix: str = "") -> str:
        return self._api(f"/repos/{self.full_name}{suffix}")

    def _repo_html(self, suffix: str = "") -> str:
        return f"{HTML_BASE}/{self.full_name}{suffix}"

    def _node_id(self, kind: str, ident: Any) -> str:
        return base64.b64encode(f"{kind}:{ident}".encode()).decode().rstrip("=")

    def _user_json(self, login: str) -> dict:
        return user_payload(
            login,
            self.state.users.get(login, 0),
            api_url=self._api(f"/users/{login}"),
            node_id=self._node_id("User", login),
            html_base=HTML_BASE,
            kind="Bot" if login == self.state.bot else "User",
        )

    def _label_id(self, name: str) -> int:
        if name not in self.state.labels:
            self.state.labels[name] = next(self._ids)
        return self.state.labels[name]

    def _label_json(self, name: str) -> dict:
        return {
            "id": self._label_id(name),
            "node_id": self._node_id("Label", name),
            "url": self._repo_api(f"/labels/{name}"),
            "name": name,
            "description": None,
            "color": "ededed",
            "default": False,
        }

    def _association(self, login: str) -> str:
        if login == self.state.owner:
            return "OWNER"
        return "COLLABORATOR" if self.state.roles.get(login, "none") != "none" else "NONE"

    def _reactions(self, url: str) -> dict:
        counts = dict.fromkeys(["+1", "-1", "laugh", "confused", "heart", "hooray", "eyes"], 0)
        return {"url": f"{url}/reactions", "total_count": 0, **counts, "rocket": 0}

    def _issue_json(self, issue: Issue) -> dict:
        url = self._repo_api(f"/issues/{issue.number}")
        return {
            "id": issue.id,
            "node_id": self._node_id("Issue", issue.id),
            "url": url,
            "repository_url": self._repo_api(),
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": self._repo_html(f"/issues/{issue.number}"),
            "number": issue.number,
            "state": issue.state,
            "state_reason": "completed" if issue.state == "closed" else None,
            "title": issue.title,
            "body": issue.body,
            "user": self._user_json(issue.user),
            "labels": [self._label_json(name) for name in issue.labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": sum(1 for c in self.state.comments.values() if c.issue == issue.number),
            "closed_at": _iso(issue.closed_at),
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.updated_at),
            "closed_by": None,
            "author_association": self._association(issue.user),
            "timeline_url": f"{url}/timeline",
            "reactions": self._reactions(url),
        }

    def _comment_json(self, comment: Comment) -> dict:
        url = self._repo_api(f"/issues/comments/{comment.id}")
        return {
            "id": comment.id,
            "node_id": self._node_id("IssueComment", comment.id),
            "url": url,
            "html_url": self._repo_html(f"/issues/{comment.issue}#issuecomment-{comment.id}"),
            "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
            "issue_url": self._repo_api(f"/issues/{comment.issue}"),
            "author_association": self._association(comment.user),
            "performed_via_github_app": None,
            "reactions": self._reactions(url),
        }

    def _repo_json(self) -> dict:
        api = self._repo_api()
        created = _iso(self._created)
        templates = {
            "archive_url": "/{archive_format}{/ref}",
            "assignees_url": "/assignees{/user}",
            "blobs_url": "/git/blobs{/sha}",
            "branches_url": "/branches{/branch}",
            "collaborators_url": "/collaborators{/collaborator}",
            "comments_url": "/comments{/number}",
            "commits_url": "/commits{/sha}",
            "compare_url": "/compare/{base}...{head}",
            "contents_url": "/contents/{+path}",
            "contributors_url": "/contributors",
            "deployments_url": "/deployments",
            "downloads_url": "/downloads",
            "events_url": "/events",
            "forks_url": "/forks",
            "git_commits_url": "/git/commits{/sha}",
            "git_refs_url": "/git/refs{/sha}",
            "git_tags_url": "/git/tags{/sha}",
            "hooks_url": "/hooks",
            "issue_comment_url": "/issues/comments{/number}",
            "issue_events_url": "/issues/events{/number}",
            "issues_url": "/issues{/number}",
            "keys_url": "/keys{/key_id}",
            "labels_url": "/labels{/name}",
            "languages_url": "/languages",
            "merges_url": "/merges",
            "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}",
            "pulls_url": "/pulls{/number}",
            "releases_url": "/releases{/id}",
            "stargazers_url": "/stargazers",
            "statuses_url": "/statuses/{sha}",
            "subscribers_url": "/subscribers",
            "subscription_url": "/subscription",
            "tags_url": "/tags",
            "teams_url": "/teams",
            "trees_url": "/git/trees{/sha}",
        }
        open_issues = sum(1 for i in self.state.issues.values() if i.state == "open")
        return {
            "id": self._repo_id,
            "node_id": self._node_id("Repository", self._repo_id),
            "name": self.state.name,
            "full_name": self.full_name,
            "owner": self._user_json(self.state.owner),
            "private": True,
            "html_url": self._repo_html(),
            "description": "issueops test double",
            "fork": False,
            "url": api,
            **{key: api + suffix for key, suffix in templates.items()},
            "git_url": f"git://github.com/{self.full_name}.git",
            "ssh_url": f"git@github.com:{self.full_name}.git",
            "clone_url": f"{HTML_BASE}/{self.full_name}.git",
            "svn_url": self._repo_html(),
            "mirror_url": None,
            "homepage": None,
            "language": "Python",
            "forks": 0,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers": 0,
            "watchers_count": 0,
            "size": sum(len(b) for b in self.state.blobs.values()) // 1024,
            "default_branch": self.state.default_branch,
            "open_issues": open_issues,
            "open_issues_count": open_issues,
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": False,
            "has_wiki": False,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "archived": False,
            "disabled": False,
            "visibility": "private",
            "license": None,
            "pushed_at": created,
            "created_at": created,
            "updated_at": created,
            "permissions": {
                "admin": False,
                "maintain": False,
                "push": True,
                "triage": True,
                "pull": True,
            },
            "network_count": 0,
            "subscribers_count": 0,
        }

    def _git_user(self, person: dict[str, str]) -> dict:
        return {"name": person["name"], "email": person["email"], "date": person["date"]}

    def _verification(self) -> dict:
        return {
            "verified": False,
            "reason": "unsigned",
            "signature": None,
            "payload": None,
            "verified_at": None,
        }

    def _git_commit_json(self, commit: Commit) -> dict:
        return {
            "sha": commit.sha,
            "node_id": self._node_id("Commit", commit.sha),
            "url": self._repo_api(f"/git/commits/{commit.sha}"),
            "html_url": self._repo_html(f"/commit/{commit.sha}"),
            "author": self._git_user(commit.author),
            "committer": self._git_user(commit.committer),
            "message": commit.message,
            "tree": {"sha": commit.tree, "url": self._repo_api(f"/git/trees/{commit.tree}")},
            "parents": [
                {
                    "sha": p,
                    "url": self._repo_api(f"/git/commits/{p}"),
                    "html_url": self._repo_html(f"/commit/{p}"),
                }
                for p in commit.parents
            ],
            "verification": self._verification(),
        }

    def _commit_json(self, commit: Commit) -> dict:
        parent_tree = self.state.trees[self.state.commits[commit.parents[0]].tree] if commit.parents else {}
        tree = self.state.trees[commit.tree]
        files = []
        for path in sorted(set(tree) | set(parent_tree)):
            old, new = parent_tree.get(path), tree.get(path)
            if old == new:
                continue
            status = "added" if old is None else "removed" if new is None else "modified"
            sha = (new or old)[1]
            files.append(
                {
                    "sha": sha,
                    "filename": path,
                    "status": status,
                    "additions": 0,
                    "deletions": 0,
                    "changes": 0,
                    "blob_url": self._repo_html(f"/blob/{commit.sha}/{path}"),
                    "raw_url": self._repo_html(f"/raw/{commit.sha}/{path}"),
                    "contents_url": self._repo_api(f"/contents/{path}?ref={commit.sha}"),
                }
            )
        author = self.state.bot if commit.author["name"] == self.state.bot else None
        return {
            "url": self._repo_api(f"/commits/{commit.sha}"),
            "sha": commit.sha,
            "node_id": self._node_id("Commit", commit.sha),
            "html_url": self._repo_html(f"/commit/{commit.sha}"),
            "comments_url": self._repo_api(f"/commits/{commit.sha}/comments"),
            "commit": {
                "url": self._repo_api(f"/git/commits/{commit.sha}"),
                "author": self._git_user(commit.author),
                "committer": self._git_user(commit.committer),
                "message": commit.message,
                "comment_count": 0,
                "tree": {"sha": commit.tree, "url": self._repo_api(f"/git/trees/{commit.tree}")},
                "verification": self._verification(),
            },
            "author": self._user_json(author) if author else None,
            "committer": self._user_json(author) if author else None,
            "parents": [
                {
                    "sha": p,
                    "url": self._repo_api(f"/commits/{p}"),
                    "html_url": self._repo_html(f"/commit/{p}"),
                }
                for p in commit.parents
            ],
            "stats": {"additions": 0, "deletions": 0, "total": 0},
            "files": files,
        }

    def _content_json(self, path: str, blob_sha: str, ref: str, *, with_content: bool) -> dict:
        data = self.state.blobs[blob_sha]
        api = self._repo_api(f"/contents/{path}?ref={ref}")
        html = self._repo_html(f"/blob/{ref}/{path}")
        git = self._repo_api(f"/git/blobs/{blob_sha}")
        out = {
            "type": "file",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": blob_sha,
            "size": len(data),
            "url": api,
            "html_url": html,
            "git_url": git,
            "download_url": f"https://raw.githubusercontent.com/{self.full_name}/{ref}/{path}",
            "_links": {"self": api, "git": git, "html": html},
        }
        if with_content:
            # GitHub wraps the base64 text every 60 characters.
            encoded = base64.b64encode(data).decode()
            out["content"] = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
            out["encoding"] = "base64"
        return out

    def _ref_json(self, branch: str) -> dict:
        sha = self.state.branches[branch]
        return {
            "ref": f"refs/heads/{branch}",
            "node_id": self._node_id("Ref", branch),
            "url": self._repo_api(f"/git/refs/heads/{branch}"),
            "object": {"type": "commit", "sha": sha, "url": self._repo_api(f"/git/commits/{sha}")},
        }

    def _rate_json(self) -> dict:
        return {
            "limit": self.rate_limit,
            "remaining": max(self.rate_limit - self.rate_used, 0),
            "reset": self._rate_reset,
            "used": self.rate_used,
        }

    # ------------------------------------------------------------------ git objects

    def _init_repository(self) -> None:
        self._repo_id = next(self._ids)
        self._created = self.now()
        self._rate_reset = int(time.time()) + 3600
        readme = f"# {self.state.name}\n".encode()
        tree = self._store_tree({"README.md": ("100644", self._store_blob(readme))})
        person = self._person(self.state.owner)
        sha = self._store_commit(tree, [], "Initial commit", person, person)
        self.state.branches[self.state.default_branch] = sha

    def _person(self, login: str) -> dict[str, str]:
        return {
            "name": login,
            "email": f"{login}@users.noreply.github.com",
            "date": _iso(self.now()),
        }

    def _store_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        self.state.blobs[sha] = data
        return sha

    def _store_tree(self, entries: dict[str, tuple[str, str]]) -> str:
        sha = hashlib.sha1(json.dumps(sorted(entries.items())).encode()).hexdigest()
        self.state.trees[sha] = dict(entries)
        return sha

    def _store_commit(self, tree, parents, message, author, committer) -> str:
        payload = json.dumps([tree, parents, message, author, committer, next(self._ids)])
        sha = hashlib.sha1(payload.encode()).hexdigest()
        self.state.commits[sha] = Commit(sha, tree, list(parents), message, author, committer)
        return sha

    def _resolve(self, ref: str) -> Commit:
        if ref in self.state.branches:
            return self.state.commits[self.state.branches[ref]]
        if ref.startswith("heads/") and ref[6:] in self.state.branches:
            return self.state.commits[self.state.branches[ref[6:]]]
        if ref in self.state.commits:
            return self.state.commits[ref]
        raise ApiError(422, f"No commit found for SHA: {ref}")

    def _is_ancestor(self, ancestor: str, sha: str) -> bool:
        todo, seen = [sha], set()
        while todo:
            current = todo.pop()
            if current == ancestor:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(self.state.commits[current].parents)
        return False

    # ------------------------------------------------------------------ routes

    def _build_routes(self) -> list[_Route]:
        table = [
            ("GET", "/rate_limit", self._get_rate_limit),
            ("GET", "/repos/{owner}/{repo}", self._get_repo),
            ("GET", "/repos/{owner}/{repo}/issues", self._list_issues),
            ("POST", "/repos/{owner}/{repo}/issues", self._create_issue),
            ("GET", "/repos/{owner}/{repo}/issues/comments/{comment_id}", self._get_comment),
            ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}", self._edit_comment),
            ("GET", "/repos/{owner}/{repo}/issues/{issue_number}", self._get_issue),
            ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments", self._list_comments),
            ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", self._post_comment),
            ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/labels", self._list_labels),
            ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels", self._add_labels),
            (
                "GET",
                "/repos/{owner}/{repo}/collaborators/{username}/permission",
                self._get_permission,
            ),
            ("GET", "/repos/{owner}/{repo}/contents/{path}", self._get_contents),
            ("PUT", "/repos/{owner}/{repo}/contents/{path}", self._put_contents),
            ("GET", "/repos/{owner}/{repo}/commits/{ref}", self._get_commit),
            ("GET", "/repos/{owner}/{repo}/branches/{branch}", self._get_branch),
            ("GET", "/repos/{owner}/{repo}/git/ref/{ref}", self._get_ref),
            ("GET", "/repos/{owner}/{repo}/git/refs/{ref}", self._get_ref),
            ("POST", "/repos/{owner}/{repo}/git/refs", self._create_ref),
            ("PATCH", "/repos/{owner}/{repo}/git/refs/{ref}", self._update_ref),
            ("GET", "/repos/{owner}/{repo}/git/commits/{commit_sha}", self._get_git_commit),
            ("POST", "/repos/{owner}/{repo}/git/commits", self._create_git_commit),
            ("POST", "/repos/{owner}/{repo}/git/blobs", self._create_blob),
            ("POST", "/repos/{owner}/{repo}/git/trees", self._create_tree),
        ]
        return [_Route(m, t, _template_regex(t), h) for m, t, h in table]

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in self._routes:
            found = route.pattern.match(path)
            if found and route.method == method:
                return route, found.groupdict()
        return None, {}

    def _take_fault(self, route: _Route) -> Fault | None:
        key = f"{route.method} {route.template}"
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.route in (key, "*"):
                    fault.times -= 1
                    return fault
        return None

    def _check_repo(self, params: dict[str, str]) -> None:
        if "owner" in params and (params["owner"], params["repo"]) != (
            self.state.owner,
            self.state.name,
        ):
            raise ApiError(404, "Not Found")

    def _issue(self, params) -> Issue:
        issue = self.state.issues.get(int(params["issue_number"]))
        if issue is None:
            raise ApiError(404, "Not Found")
        return issue

    def _paginate(self, items: list, query: dict[str, str], path: str) -> tuple[list, dict]:
        try:
            per_page = min(max(int(query.get("per_page", 30)), 1), 100)
            page = max(int(query.get("page", 1)), 1)
        except ValueError:
            raise ApiError(422, "Validation Failed", [{"field": "per_page", "code": "invalid"}]) from None
        last = max((len(items) + per_page - 1) // per_page, 1)
        links = []

        def link(number: int, rel: str) -> str:
            params = {**query, "per_page": per_page, "page": number}
            return f'<{self._api(path)}?{urlencode(params)}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = {"Link": ", ".join(links)} if links else {}
        return items[(page - 1) * per_page : page * per_page], headers

    # -- handlers: each returns (status, json) or (status, json, headers)

    def _get_rate_limit(self, params, query, body, path):
        rate = self._rate_json()
        return 200, {"resources": {"core": rate, "search": dict(rate, limit=30)}, "rate": rate}

    def _get_repo(self, params, query, body, path):
        return 200, self._repo_json()

    def _list_issues(self, params, query, body, path):
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise ApiError(422, "Validation Failed", [{"field": "state", "code": "invalid"}])
        wanted = [name for name in query.get("labels", "").split(",") if name]
        since = _parse_iso(query["since"]) if "since" in query else None
        issues = [
            issue
            for issue in self.state.issues.values()
            if (state == "all" or issue.state == state)
            and all(name in issue.labels for name in wanted)
            and (since is None or issue.updated_at >= since)
        ]
        key = (lambda i: i.updated_at) if query.get("sort") == "updated" else (lambda i: i.number)
        issues.sort(key=key, reverse=query.get("direction", "desc") == "desc")
        page, headers = self._paginate(issues, query, path)
        return 200, [self._issue_json(i) for i in page], headers

    def _create_issue(self, params, query, body, path):
        if not isinstance(body, dict) or not isinstance(body.get("title"), str) or not body["title"]:
            raise ApiError(
                422,
                "Validation Failed",
                [{"resource": "Issue", "field": "title", "code": "missing_field"}],
            )
        number = self.create_issue(
            body["title"], body=body.get("body"), labels=body.get("labels", []), user=self._caller
        )
        issue = self.state.issues[number]
        return 201, self._issue_json(issue), {"Location": self._repo_api(f"/issues/{number}")}

    def _get_issue(self, params, query, body, path):
        return 200, self._issue_json(self._issue(params))

    def _comment(self, params) -> Comment:
        comment = self.state.comments.get(int(params["comment_id"]))
        if comment is None:
            raise ApiError(404, "Not Found")
        return comment

    def _get_comment(self, params, query, body, path):
        return 200, self._comment_json(self._comment(params))

    def _comment_body(self, body) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            raise ApiError(422, 'Invalid request.\n\n"body" wasn\'t supplied.')
        if len(body["body"]) > 65536:
            raise ApiError(
                422,
                "Validation Failed",
                [
                    {
                        "resource": "IssueComment",
                        "code": "custom",
                        "field": "body",
                        "message": "body is too long (maximum is 65536 characters)",
                    }
                ],
            )
        return body["body"]

    def _edit_comment(self, params, query, body, path):
        comment = self._comment(params)
        text = self._comment_body(body)
        if comment.user != self._caller and self.state.roles.get(self._caller) not in (
            "admin",
            "maintain",
        ):
            raise ApiError(403, "Resource not accessible by integration")
        comment.body = text
        comment.updated_at = self.now()
        return 200, self._comment_json(comment)

    def _list_comments(self, params, query, body, path):
        issue = self._issue(params)
        since = _parse_iso(query["since"]) if "since" in query else None
        comments = [c for c in self.comments_on(issue.number) if since is None or c.updated_at >= since]
        page, headers = self._paginate(comments, query, path)
        return 200, [self._comment_json(c) for c in page], headers

    def _post_comment(self, params, query, body, path):
        issue = self._issue(params)
        comment_id = self.add_comment(issue.number, self._comment_body(body), user=self._caller)
        comment = self.state.comments[comment_id]
        return 201, self._comment_json(comment), {"Location": self._comment_json(comment)["url"]}

    def _list_labels(self, params, query, body, path):
        issue = self._issue(params)
        page, headers = self._paginate(issue.labels, query, path)
        return 200, [self._label_json(name) for name in page], headers

    def _add_labels(self, params, query, body, path):
        issue = self._issue(params)
        names = body.get("labels") if isinstance(body, dict) else body
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ApiError(422, "Invalid request.\n\nNo labels were supplied.")
        for name in names:
            if name not in issue.labels:
                issue.labels.append(name)
        issue.updated_at = self.now()
        return 200, [self._label_json(name) for name in issue.labels]

    def _get_permission(self, params, query, body, path):
        login = params["username"]
        if login not in self.state.users:
            raise ApiError(404, "Not Found")
        role = self.state.roles.get(login, "none")
        user = self._user_json(login)
        user["role_name"] = role
        user["permissions"] = {
            "admin": role == "admin",
            "maintain": role in ("admin", "maintain"),
            "push": role in ("admin", "maintain", "write"),
            "triage": role in ("admin", "maintain", "write", "triage"),
            "pull": role != "none",
        }
        return 200, {"permission": ROLE_TO_PERMISSION[role], "role_name": role, "user": user}

    def _check_path(self, path: str) -> None:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
            raise ApiError(
                422,
                "path contains a malformed path component",
                [{"field": "path", "code": "invalid"}],
            )

    def _get_contents(self, params, query, body, path):
        file_path = params["path"]
        ref = query.get("ref", self.state.default_branch)
        try:
            commit = self._resolve(ref)
        except ApiError:
            raise ApiError(404, f"No commit found for the ref {ref}") from None
        tree = self.state.trees[commit.tree]
        if file_path in tree:
            return 200, self._content_json(file_path, tree[file_path][1], ref, with_content=True)
        prefix = file_path + "/"
        children = sorted({p[len(prefix) :].split("/")[0] for p in tree if p.startswith(prefix)})
        if not children:
            raise ApiError(404, "Not Found")
        listing = []
        for child in children:
            child_path = prefix + child
            if child_path in tree:
                listing.append(self._content_json(child_path, tree[child_path][1], ref, with_content=False))
            else:
                api = self._repo_api(f"/contents/{child_path}?ref={ref}")
                html = self._repo_html(f"/tree/{ref}/{child_path}")
                listing.append(
                    {
                        "type": "dir",
                        "name": child,
                        "path": child_path,
                        "sha": "0" * 40,
                        "size": 0,
                        "url": api,
                        "html_url": html,
                        "git_url": None,
                        "download_url": None,
                        "_links": {"self": api, "git": None, "html": html},
                    }
                )
        return 200, listing

    def _put_contents(self, params, query, body, path):
        file_path = params["path"]
        self._check_path(file_path)
        if not isinstance(body, dict):
            raise ApiError(400, "Problems parsing JSON")
        for required in ("message", "content"):
            if not isinstance(body.get(required), str):
                raise ApiError(422, f'Invalid request.\n\n"{required}" wasn\'t supplied.')
        try:
            data = base64.b64decode(body["content"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "content is not valid Base64") from None
        branch = body.get("branch", self.state.default_branch)
        if branch not in self.state.branches:
            raise ApiError(404, f"Branch {branch} not found")
        head = self.state.commits[self.state.branches[branch]]
        tree = dict(self.state.trees[head.tree])
        current = tree.get(file_path)
        sha = body.get("sha")
        if current is not None and sha is None:
            raise ApiError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if sha is not None and (current is None or current[1] != sha):
            raise ApiError(409, f"{file_path} does not match {sha}")
        blob = self._store_blob(data)
        tree[file_path] = ("100644", blob)
        person = self._person(self._caller)
        for key in ("author", "committer"):
            if isinstance(body.get(key), dict):
                person = {
                    **person,
                    **{k: v for k, v in body[key].items() if k in ("name", "email")},
                }
        commit_sha = self._store_commit(self._store_tree(tree), [head.sha], body["message"], person, person)
        self.state.branches[branch] = commit_sha
        commit = self._git_commit_json(self.state.commits[commit_sha])
        content = self._content_json(file_path, blob, branch, with_content=False)
        return (201 if current is None else 200), {"content": content, "commit": commit}

    def _get_commit(self, params, query, body, path):
        return 200, self._commit_json(self._resolve(params["ref"]))

    def _get_branch(self, params, query, body, path):
        name = params["branch"]
        if name not in self.state.branches:
            raise ApiError(404, "Branch not found")
        commit = self.state.commits[self.state.branches[name]]
        url = self._repo_api(f"/branches/{name}")
        return 200, {
            "name": name,
            "commit": self._commit_json(commit),
            "_links": {"self": url, "html": self._repo_html(f"/tree/{name}")},
            "protected": False,
            "protection": {
                "enabled": False,
                "required_status_checks": {
                    "enforcement_level": "off",
                    "contexts": [],
                    "checks": [],
                },
            },
            "protection_url": f"{url}/protection",
        }

    def _branch_of(self, ref: str) -> str:
        if not ref.startswith("heads/"):
            raise ApiError(404, "Not Found")
        return ref[len("heads/") :]

    def _get_ref(self, params, query, body, path):
        branch = self._branch_of(params["ref"])
        if branch not in self.state.branches:
            raise ApiError(404, "Not Found")
        return 200, self._ref_json(branch)

    def _create_ref(self, params, query, body, path):
        if not isinstance(body, dict) or not str(body.get("ref", "")).startswith("refs/heads/"):
            raise ApiError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        branch = body["ref"][len("refs/heads/") :]
        if branch in self.state.branches:
            raise ApiError(422, "Reference already exists")
        if body.get("sha") not in self.state.commits:
            raise ApiError(422, "Object does not exist")
        self.state.branches[branch] = body["sha"]
        return 201, self._ref_json(branch), {"Location": self._ref_json(branch)["url"]}

    def _update_ref(self, params, query, body, path):
        branch = self._branch_of(params["ref"])
        if branch not in self.state.branches:
            raise ApiError(422, "Reference does not exist")
        sha = body.get("sha") if isinstance(body, dict) else None
        if sha not in self.state.commits:
            raise ApiError(422, "Object does not exist")
        if not body.get("force") and not self._is_ancestor(self.state.branches[branch], sha):
            raise ApiError(422, "Update is not a fast forward")
        self.state.branches[branch] = sha
        return 200, self._ref_json(branch)

    def _get_git_commit(self, params, query, body, path):
        commit = self.state.commits.get(params["commit_sha"])
        if commit is None:
            raise ApiError(404, "Not Found")
        return 200, self._git_commit_json(commit)

    def _create_git_commit(self, params, query, body, path):
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            raise ApiError(422, 'Invalid request.\n\n"message" wasn\'t supplied.')
        if body.get("tree") not in self.state.trees:
            raise ApiError(422, "Tree SHA does not exist")
        parents = body.get("parents", [])
        if any(p not in self.state.commits for p in parents):
            raise ApiError(422, "Parent SHA does not exist or is not a commit object")
        person = self._person(self._caller)
        author = {**person, **(body.get("author") or {})}
        committer = {**person, **(body.get("committer") or {})}
        sha = self._store_commit(body["tree"], parents, body["message"], author, committer)
        url = self._repo_api(f"/git/commits/{sha}")
        return 201, self._git_commit_json(self.state.commits[sha]), {"Location": url}

    def _create_blob(self, params, query, body, path):
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            raise ApiError(422, 'Invalid request.\n\n"content" wasn\'t supplied.')
        encoding = body.get("encoding", "utf-8")
        if encoding == "base64":
            try:
                data = base64.b64decode(body["content"], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, "content is not valid Base64") from None
        elif encoding in ("utf-8", "utf8"):
            data = body["content"].encode()
        else:
            raise ApiError(422, f"encoding {encoding!r} is not supported")
        sha = self._store_blob(data)
        url = self._repo_api(f"/git/blobs/{sha}")
        return 201, {"url": url, "sha": sha}, {"Location": url}

    def _create_tree(self, params, query, body, path):
        if not isinstance(body, dict) or not isinstance(body.get("tree"), list):
            raise ApiError(422, 'Invalid request.\n\n"tree" wasn\'t supplied.')
        base = body.get("base_tree")
        if base is not None and base not in self.state.trees:
            raise ApiError(422, "base_tree is not a valid tree oid")
        entries = dict(self.state.trees[base]) if base else {}
        for element in body["tree"]:
            entry_path = element.get("path", "")
            self._check_path(entry_path)
            if element.get("mode") not in ("100644", "100755", "120000") or element.get("type") != "blob":
                raise ApiError(422, "tree.mode and tree.type must describe a blob")
            if "content" in element:
                entries[entry_path] = (
                    element["mode"],
                    self._store_blob(element["content"].encode()),
                )
            elif element.get("sha") is None:
                entries.pop(entry_path, None)
            elif element["sha"] in self.state.blobs:
                entries[entry_path] = (element["mode"], element["sha"])
            else:
                raise ApiError(422, f"tree.sha {element['sha']} is not a valid blob")
        sha = self._store_tree(entries)
        tree = [
            {
                "path": p,
                "mode": mode,
                "type": "blob",
                "sha": blob,
                "size": len(self.state.blobs[blob]),
                "url": self._repo_api(f"/git/blobs/{blob}"),
            }
            for p, (mode, blob) in sorted(entries.items())
        ]
        url = self._repo_api(f"/git/trees/{sha}")
        return 201, {"sha": sha, "url": url, "tree": tree, "truncated": False}, {"Location": url}

    # ------------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers, raw_body: bytes):
        """Answer one request: (status, headers, body bytes), or None to drop the connection."""
        split = urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        route, params = self._match(method, path)
        record = RequestRecord(method, raw_path, f"{route.method} {route.template}" if route else None, 0)
        with self._lock:
            self.requests.append(record)
        extra: dict[str, str] = {}
        try:
            if route is None:
                raise ApiError(404, "Not Found")
            self._authenticate(headers)
            fault = self._take_fault(route)
            if fault is not None:
                if fault.kind in ("hang", "disconnect"):
                    record.status = -1
                    if fault.kind == "hang":
                        self._closing.wait(fault.hang_seconds)
                    return None
                if not fault.applied:
                    self._raise_fault(fault)
            body = None
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise ApiError(400, "Problems parsing JSON") from None
            record.body = body
            with self._lock:
                self._check_repo(params)
                self._count_rate()
                answer = route.handler(params, query, body, path)
            if fault is not None and fault.applied:
                self._raise_fault(fault)
            status, payload = answer[0], answer[1]
            extra = dict(answer[2]) if len(answer) > 2 else {}
        except ApiError as error:
            status = error.status
            payload = {
                "message": error.message,
                "documentation_url": DOCS,
                "status": str(error.status),
            }
            if error.errors:
                payload["errors"] = error.errors
            extra = dict(error.headers)
        data = json.dumps(payload).encode()
        out = {"Content-Type": "application/json; charset=utf-8", **self._rate_headers(), **extra}
        if method == "GET" and status == 200:
            etag = 'W/"' + hashlib.sha1(data).hexdigest() + '"'
            out["ETag"] = etag
            out["Cache-Control"] = "private, max-age=60, s-maxage=60"
            out["Vary"] = "Accept, Authorization, Cookie, X-GitHub-OTP"
            if etag in [tag.strip() for tag in (headers.get("If-None-Match") or "").split(",")]:
                # A conditional hit costs no rate limit on GitHub.
                with self._lock:
                    self.rate_used = max(self.rate_used - 1, 0)
                out.update(self._rate_headers())
                status, data = 304, b""
        record.status = status
        return status, out, data

    @property
    def _caller(self) -> str:
        return self.state.bot

    def _authenticate(self, headers) -> None:
        if self.token is None:
            return
        value = headers.get("Authorization") or ""
        scheme, _, given = value.partition(" ")
        if scheme.lower() not in ("token", "bearer") or given != self.token:
            raise ApiError(401, "Bad credentials")

    def _count_rate(self) -> None:
        if self.rate_used >= self.rate_limit:
            raise ApiError(
                403,
                "API rate limit exceeded for user ID 1.",
                headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(self._rate_reset)},
            )
        self.rate_used += 1

    def _rate_headers(self) -> dict[str, str]:
        rate = self._rate_json()
        return {
            "X-RateLimit-Limit": str(rate["limit"]),
            "X-RateLimit-Remaining": str(rate["remaining"]),
            "X-RateLimit-Reset": str(rate["reset"]),
            "X-RateLimit-Used": str(rate["used"]),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
        }

    def _raise_fault(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "rate_limit":
            reset = int(time.time()) + fault.retry_after
            raise ApiError(
                403,
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support "
                "for help, please include the request ID.",
                headers={
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                    "Retry-After": str(fault.retry_after),
                },
            )
        if kind in ("secondary_rate_limit", 429):
            raise ApiError(
                403 if kind == "secondary_rate_limit" else 429,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                headers={"Retry-After": str(fault.retry_after)},
            )
        messages = {
            401: "Bad credentials",
            403: "Resource not accessible by personal access token",
            404: "Not Found",
            409: "Conflict",
            422: "Validation Failed",
            500: "Server Error",
            502: "Server Error",
            503: "Service Unavailable",
        }
        raise ApiError(int(kind), messages[int(kind)])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: GitHubDouble
    server_version = "GitHub.com"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        answer = self.double.handle(self.command, self.path, self.headers, raw)
        if answer is None:
            self.close_connection = True
            return
        status, headers, data = answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
