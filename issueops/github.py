"""A thin client over PyGithub for the few GitHub calls issueops makes.

Every PyGithub or network exception is re-raised here, once, as an issueops error with a
short message: ExternalServiceError(transient=True) for 5xx, rate limits and network trouble
(retried first, with backoff), Unauthorized for 401/403, NotFound for 404, Conflict for 409,
InvalidInput for 422. Each raised error also carries `status` (GitHub's HTTP status or None)
and `retry_after` (seconds GitHub asked us to wait, or None). The token is registered with
the log masker and never appears in a message.
"""

from __future__ import annotations

import base64
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from github import Auth, Github, GithubException, InputGitTreeElement, RateLimitExceededException

from issueops.config import Settings
from issueops.errors import (
    Conflict,
    ExternalServiceError,
    InvalidInput,
    IssueOpsError,
    NotFound,
    Unauthorized,
)
from issueops.logs import mask, register_secret

log = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("admin", "maintain", "write", "triage", "read", "none")
STEERING_ROLES = frozenset({"admin", "maintain", "write"})
# The legacy `permission` field only knows admin/write/read/none; role_name is finer.
_PERMISSION_FALLBACK = {"admin": "admin", "write": "write", "read": "read", "none": "none"}


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: `attempts` tries in all, waits doubling from `backoff`.

    A wait GitHub asks for (Retry-After, rate-limit reset) is honoured; when it is longer than
    `max_wait` we give up at once instead of blocking a pipeline step.
    """

    attempts: int = 4
    backoff: float = 1.0
    max_wait: float = 60.0


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    body: str
    state: str
    labels: tuple[str, ...]
    author: str
    html_url: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Comment:
    id: int
    issue: int
    body: str
    author: str
    html_url: str
    created_at: datetime
    updated_at: datetime


def html_base_url(api_url: str) -> str:
    """The web address for an API address: api.github.com -> github.com, GHES /api/v3 -> host."""
    parts = urllib.parse.urlsplit(api_url.rstrip("/"))
    if parts.netloc == "api.github.com":
        return "https://github.com"
    path = parts.path[: -len("/api/v3")] if parts.path.endswith("/api/v3") else parts.path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class GitHubClient:
    """One repository on GitHub, seen through the calls issueops needs."""

    def __init__(
        self,
        token: str,
        repository: str,
        *,
        api_url: str = "https://api.github.com",
        retry: RetryPolicy | None = None,
        timeout: int = 15,
        throttle: bool = True,
        per_page: int = 100,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not token:
            raise InvalidInput("a GitHub token is needed (set GITHUB_TOKEN)")
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise InvalidInput(f"GitHub repository must be 'owner/name', got {repository!r}")
        register_secret(token)
        self.repository = repository
        self.api_url = api_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        # PyGithub's own retry would sleep until a rate limit resets; ours is bounded instead.
        # Its write throttle (1 s between writes) follows GitHub's secondary-limit guidance.
        self._gh = Github(
            auth=Auth.Token(token),
            base_url=self.api_url,
            timeout=timeout,
            retry=None,
            per_page=per_page,
            seconds_between_requests=0.25 if throttle else None,
            seconds_between_writes=1.0 if throttle else None,
            lazy=True,
        )
        self._repo = self._gh.get_repo(repository)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> GitHubClient:
        """A client for `settings.github_repository`, authenticated with `settings.github_token`."""
        if not settings.github_token or not settings.github_repository:
            raise InvalidInput("GitHub needs GITHUB_TOKEN and GITHUB_REPOSITORY to be set")
        return cls(
            settings.github_token,
            settings.github_repository,
            api_url=settings.github_api_url,
            **options,
        )

    def close(self) -> None:
        self._gh.close()

    # -------------------------------------------------------------- issues and comments

    def get_issue(self, number: int) -> Issue:
        return self._call(f"reading issue #{number}", lambda: _issue(self._repo.get_issue(number)))

    def list_labelled_issues(
        self, label: str, since: datetime | None = None, *, state: str = "open"
    ) -> list[Issue]:
        """Issues carrying `label`, updated at or after `since` when given."""
        options: dict[str, Any] = {"labels": [label], "state": state}
        if since is not None:
            options["since"] = _utc(since)
        return self._call(
            f"listing issues labelled {label!r}",
            # The issues endpoint lists pull requests too; their web address says /pull/.
            lambda: [_issue(i) for i in self._repo.get_issues(**options) if "/pull/" not in i.html_url],
        )

    def create_issue(self, title: str, body: str, labels: Iterable[str] = ()) -> Issue:
        """Open an issue with `labels` (GitHub creates labels it does not know yet)."""
        names = [str(label) for label in labels]
        # Not retried on 5xx or time-outs: GitHub may have opened it. A caller that must not open
        # two looks for it again (by a marker in its body) before trying once more.
        return self._call(
            f"opening issue {title[:60]!r}",
            lambda: _issue(self._repo.create_issue(title=title, body=body, labels=names)),
            idempotent=False,
        )

    def list_comments(self, issue: int, since: datetime | None = None) -> list[Comment]:
        """Comments on `issue`, oldest first, updated at or after `since` when given."""
        options = {"since": _utc(since)} if since is not None else {}
        return self._call(
            f"listing comments on issue #{issue}",
            lambda: [_comment(c, issue) for c in self._repo.get_issue(issue).get_comments(**options)],
        )

    def post_comment(self, issue: int, body: str) -> tuple[int, str]:
        """Create a new comment; returns its id and web address."""

        def post() -> tuple[int, str]:
            comment = self._repo.get_issue(issue).create_comment(body)
            return comment.id, comment.html_url

        # Not retried on 5xx or time-outs: GitHub may have created it, and a duplicate
        # comment is worse than a failed step that its caller retries.
        return self._call(f"commenting on issue #{issue}", post, idempotent=False)

    def edit_comment(self, comment_id: int, body: str) -> None:
        """Replace the body of an existing comment (the same id, edited in place)."""

        def edit() -> None:
            self._repo.requester.requestJsonAndCheck(
                "PATCH", f"{self._repo.url}/issues/comments/{int(comment_id)}", input={"body": body}
            )

        self._call(f"editing comment {comment_id}", edit)

    def add_labels(self, issue: int, labels: Iterable[str]) -> None:
        names = [str(label) for label in labels]
        if names:
            self._call(
                f"labelling issue #{issue}",
                lambda: self._repo.get_issue(issue).add_to_labels(*names),
            )

    # -------------------------------------------------------------- permissions

    def permission(self, user: str) -> str:
        """The user's role on the repository: admin, maintain, write, triage, read or none."""

        def fetch() -> str:
            login = urllib.parse.quote(user, safe="")
            _, data = self._repo.requester.requestJsonAndCheck(
                "GET", f"{self._repo.url}/collaborators/{login}/permission"
            )
            role = data.get("role_name")
            if role in ROLES:
                return role
            # Custom organisation roles extend a base role we cannot see; trust `permission`.
            return _PERMISSION_FALLBACK.get(data.get("permission"), "none")

        return self._call(f"reading {user}'s permission", fetch)

    def can_steer(self, user: str, allowlist: Iterable[str] = ()) -> bool:
        """May `user` steer a run (new hyperparameters, approval)? write or more, or allowlisted."""
        if user.lower() in {name.lower() for name in allowlist}:
            return True
        try:
            return self.permission(user) in STEERING_ROLES
        except NotFound:
            log.info("GitHub does not know user %s; not allowed to steer", user)
            return False

    # -------------------------------------------------------------- files and commits

    def read_file(self, path: str, branch: str | None = None) -> bytes | None:
        """A file's bytes at the head of `branch` (default branch when None), None if absent."""

        def read() -> bytes | None:
            try:
                found = self._repo.get_contents(path, **({"ref": branch} if branch else {}))
            except GithubException as error:
                if error.status == 404:
                    return None
                raise
            if isinstance(found, list):
                raise InvalidInput(f"{path} is a directory in {self.repository}")
            return found.decoded_content

        return self._call(f"reading {path}", read)

    def commit_file(
        self, path: str, content: bytes, message: str, branch: str | None = None
    ) -> tuple[str, str]:
        """Create or update one file through the contents API: one commit.

        Returns the commit SHA and the file's web address at that commit. A stale SHA
        (someone committed the file between our read and our write) is re-read once.
        """
        options = {"branch": branch} if branch else {}

        def write() -> tuple[str, str]:
            try:
                current = self._repo.get_contents(path, **({"ref": branch} if branch else {}))
            except GithubException as error:
                if error.status != 404:
                    raise
                current = None
            if isinstance(current, list):
                raise InvalidInput(f"{path} is a directory in {self.repository}")
            if current is None:
                done = self._repo.create_file(path, message, content, **options)
            else:
                done = self._repo.update_file(path, message, content, current.sha, **options)
            sha = done["commit"].sha
            return sha, f"{self._repo.html_url}/blob/{sha}/{urllib.parse.quote(path)}"

        try:
            return self._call(f"committing {path}", write)
        except Conflict:
            log.info("%s changed while we wrote it; reading it again", path)
            return self._call(f"committing {path}", write)

    def commit_files(
        self, files: Mapping[str, bytes], message: str, branch: str | None = None
    ) -> tuple[str, str]:
        """Commit several files in one commit with the Git Data API; returns (sha, commit URL).

        Nothing is visible until the final fast-forward of the branch, so a failure part-way
        leaves the branch as it was. A missing branch is created from the default branch; a
        branch that moved meanwhile is rebuilt on its new head once.
        """
        if not files:
            raise InvalidInput("nothing to commit")
        branch = branch or self.default_branch()
        blobs: dict[str, str] = {}
        for path, data in files.items():
            encoded = base64.b64encode(data).decode()
            blobs[path] = self._call(
                f"uploading {path}", lambda e=encoded: self._repo.create_git_blob(e, "base64").sha
            )
        elements = [InputGitTreeElement(p, "100644", "blob", sha=s) for p, s in blobs.items()]

        def head_sha() -> str:
            try:
                return self._repo.get_git_ref(f"heads/{branch}").object.sha
            except GithubException as error:
                if error.status != 404:
                    raise
            base = self._repo.get_git_ref(f"heads/{self._repo.default_branch}").object.sha
            log.info("creating branch %s in %s", branch, self.repository)
            self._repo.create_git_ref(f"refs/heads/{branch}", base)
            return base

        def build_and_move() -> tuple[str, str]:
            parent = self._repo.get_git_commit(head_sha())
            tree = self._repo.create_git_tree(elements, base_tree=parent.tree)
            commit = self._repo.create_git_commit(message, tree, [parent])
            # Not forced: GitHub refuses (422) if the branch moved since we read its head.
            self._repo.requester.requestJsonAndCheck(
                "PATCH",
                f"{self._repo.url}/git/refs/heads/{urllib.parse.quote(branch)}",
                input={"sha": commit.sha, "force": False},
            )
            return commit.sha, commit.html_url

        action = f"committing {len(files)} file(s) to {branch}"
        try:
            return self._call(action, build_and_move)
        except (InvalidInput, Conflict) as error:
            # 422 "not a fast forward" or 409: another writer moved the branch; rebuild once.
            log.info("%s moved while we committed (%s); rebuilding on its new head", branch, error)
            return self._call(action, build_and_move)

    def default_branch(self) -> str:
        return self._call("reading the repository", lambda: self._repo.default_branch)

    def web_url(self) -> str:
        """The repository's web address, as GitHub reports it."""
        return self._call("reading the repository", lambda: self._repo.html_url)

    def blob_url(self, path: str, ref: str) -> str:
        """The web address of `path` at `ref` (a branch or commit SHA)."""
        return f"{self.web_url()}/blob/{ref}/{urllib.parse.quote(path)}"

    # -------------------------------------------------------------- error boundary

    def _call(self, action: str, fn: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run `fn`, retrying transient failures, and translate what escapes into our errors."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except IssueOpsError:
                raise
            except (GithubException, requests.RequestException, OSError) as exc:
                error = _translate(exc, action, self.repository)
            if not _should_retry(error, idempotent) or attempt >= self.retry.attempts:
                raise error
            wait = self.retry.backoff * 2 ** (attempt - 1)
            if error.retry_after is not None:
                if error.retry_after > self.retry.max_wait:
                    raise error
                wait = error.retry_after
            wait = min(wait, self.retry.max_wait)
            log.warning(
                "%s; retrying in %.1f s (attempt %d of %d)",
                error,
                wait,
                attempt + 1,
                self.retry.attempts,
            )
            self._sleep(wait)


def _should_retry(error: IssueOpsError, idempotent: bool) -> bool:
    if not isinstance(error, ExternalServiceError) or not error.transient:
        return False
    # A rate-limited request was refused, so even a create is safe to send again.
    return idempotent or error.retry_after is not None


def _translate(exc: Exception, action: str, repository: str) -> IssueOpsError:
    """One PyGithub / requests exception -> one issueops error with a short message."""
    if not isinstance(exc, GithubException):
        kind = "timed out" if isinstance(exc, requests.Timeout) else "could not connect"
        error: IssueOpsError = ExternalServiceError(
            f"GitHub {kind} while {action} in {repository}", transient=True
        )
        return _annotate(error, None, None)
    status = exc.status
    headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
    detail = mask(_detail(exc.data) or "")
    where = f"while {action} in {repository}"
    retry_after = _retry_after(headers)
    rate_limited = (
        isinstance(exc, RateLimitExceededException)
        or status == 429
        or (status == 403 and headers.get("x-ratelimit-remaining") == "0")
    )
    if rate_limited:
        wait = f"; GitHub asks to wait {retry_after:.0f} s" if retry_after is not None else ""
        error = ExternalServiceError(
            f"GitHub rate limit reached {where}{wait}", transient=True, status=status
        )
        return _annotate(error, status, retry_after if retry_after is not None else 60.0)
    said = f": {detail}" if detail else ""
    if status == 401:
        error = Unauthorized(f"GitHub rejected the token (401) {where}{said}")
    elif status == 403:
        error = Unauthorized(f"GitHub refused access (403) {where}{said}")
    elif status == 404:
        error = NotFound(f"GitHub found nothing (404) {where}{said}")
    elif status == 409:
        error = Conflict(f"GitHub reported a conflict (409) {where}{said}")
    elif status == 422:
        error = InvalidInput(f"GitHub refused the request (422) {where}{said}")
    elif status >= 500:
        error = ExternalServiceError(f"GitHub failed ({status}) {where}{said}", transient=True, status=status)
    else:
        error = ExternalServiceError(f"GitHub answered {status} {where}{said}", status=status)
    return _annotate(error, status, retry_after)


def _annotate(error: IssueOpsError, status: int | None, retry_after: float | None) -> IssueOpsError:
    error.status = status
    error.retry_after = retry_after
    return error


def _detail(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    message = str(data.get("message") or "").strip().replace("\n\n", " ")
    problems = [
        str(e.get("message") or f"{e.get('field')} {e.get('code')}")
        for e in data.get("errors") or []
        if isinstance(e, dict)
    ]
    return "; ".join(p for p in [message, *problems] if p) or None


def _retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait, from Retry-After or (when the budget is spent) X-RateLimit-Reset."""
    if "retry-after" in headers:
        try:
            return max(float(headers["retry-after"]), 0.0)
        except ValueError:
            return None
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        try:
            return max(float(headers["x-ratelimit-reset"]) - time.time(), 0.0)
        except ValueError:
            return None
    return None


def _utc(moment: datetime) -> datetime:
    # PyGithub formats `since` with strftime and a literal Z, so it must already be UTC.
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _issue(issue: Any) -> Issue:
    return Issue(
        number=issue.number,
        title=issue.title or "",
        body=issue.body or "",
        state=issue.state,
        labels=tuple(label.name for label in issue.labels),
        author=issue.user.login if issue.user else "",
        html_url=issue.html_url,
        created_at=issue.created_at,
        updated_at=issue.updated_at,
    )


def _comment(comment: Any, issue: int) -> Comment:
    return Comment(
        id=comment.id,
        issue=issue,
        body=comment.body or "",
        author=comment.user.login if comment.user else "",
        html_url=comment.html_url,
        created_at=comment.created_at,
        updated_at=comment.updated_at,
    )


def configured_client(settings: Settings) -> GitHubClient | None:
    """The client when a token and repository are configured, else None (the embedded default)."""
    if not (settings.github_token and settings.github_repository):
        return None
    return GitHubClient.from_settings(settings)
