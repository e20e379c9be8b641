"""`issueops bridge poll`: the webhook's events from the REST API, for repositories without a public URL.

Each round lists open issues with the training label updated since a persisted cursor, then the
new comments of those issues; then the open retraining proposals (`mlops:retrain-proposal`) the
same way, for their comments only (`/approve-retrain`): a proposal is no request until approved. Every list is a conditional request (If-None-Match with the ETag of
the last answer), so a quiet repository costs no rate limit: GitHub does not count a 304. What is
found goes into the same durable inbox as webhook deliveries, under ids that make a second sight of
the same thing a duplicate. Retry-After and an exhausted X-RateLimit-Remaining (wait until
X-RateLimit-Reset) are honoured; 5xx answers back off exponentially.

Limitation: the issues list does not say who applied the label, so a polled request is authorised
as the issue's author (a webhook knows the actual sender).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from issueops.bridge.events import TRAIN_LABEL, label_names
from issueops.bridge.inbox import Inbox
from issueops.bridge.messages import is_own_comment
from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput
from issueops.logs import register_secret
from issueops.monitoring.proposal_ref import PROPOSAL_LABEL

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
CURSOR_KEY = "poll:cursor:{repo}"
PROPOSAL_CURSOR_KEY = "poll:cursor:{repo}:proposals"
ETAG_KEY = "poll:etag:{url}"
COMMENT_CURSOR_KEY = "poll:comments:{repo}:{issue}"


@dataclass
class PollRound:
    """What one round found: deliveries queued, requests answered 304, the wait GitHub asked for."""

    queued: int = 0
    not_modified: int = 0
    requests: int = 0
    wait: float = 0.0


class GitHubAskedToWait(Exception):
    def __init__(self, wait: float, message: str):
        super().__init__(message)
        self.wait = wait


class Poller:
    def __init__(
        self,
        settings: Settings,
        inbox: Inbox,
        *,
        label: str = TRAIN_LABEL,
        proposal_label: str = PROPOSAL_LABEL,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not settings.github_token or not settings.github_repository:
            raise InvalidInput("polling needs GITHUB_TOKEN and GITHUB_REPOSITORY to be set")
        register_secret(settings.github_token)
        self.repo = settings.github_repository
        self.inbox, self.label, self.proposal_label, self.clock = inbox, label, proposal_label, clock
        self.http = client or httpx.Client(
            base_url=settings.github_api_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {settings.github_token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "issueops-bridge",
            },
            timeout=15,
        )
        self._failures = 0

    # ------------------------------------------------------------------ one round

    def poll_once(self) -> PollRound:
        """List, queue, advance the cursors. Raises GitHubAskedToWait when GitHub asks us to wait."""
        found = PollRound()
        self._labelled(self.label, CURSOR_KEY.format(repo=self.repo), found, requests=True)
        self._labelled(self.proposal_label, PROPOSAL_CURSOR_KEY.format(repo=self.repo), found, requests=False)
        return found

    def _labelled(self, label: str, cursor_key: str, found: PollRound, *, requests: bool) -> None:
        """Open issues with `label` updated since the cursor: each one as an `issues` event when
        `requests` (a training request), and its new comments."""
        cursor = self.inbox.get(cursor_key)
        params = {
            "labels": label,
            "state": "open",
            "sort": "updated",
            "direction": "asc",
            "per_page": "100",
        }
        if cursor:
            params["since"] = cursor
        issues = self._get_list(f"/repos/{self.repo}/issues", params, found)
        if issues is None:
            return
        repository = {"full_name": self.repo}
        newest = cursor
        for issue in issues:
            if issue.get("pull_request"):
                continue
            updated = issue.get("updated_at")
            if updated and (newest is None or updated > newest):
                newest = updated
            # A proposal that also has the training label was read with the training requests.
            if not requests and self._has_label(issue):
                continue
            if requests:
                body_digest = hashlib.sha1((issue.get("body") or "").encode()).hexdigest()[:12]
                payload = {
                    "action": "opened",
                    "issue": issue,
                    "repository": repository,
                    "sender": issue.get("user") or {},
                }
                if self.inbox.accept(
                    f"poll:issue:{issue['number']}:{body_digest}", "issues", json.dumps(payload).encode()
                ):
                    found.queued += 1
            if issue.get("comments"):
                found.queued += self._comments(issue, repository, found)
        if newest and newest != cursor:
            self.inbox.put(cursor_key, newest)

    def _comments(self, issue: dict[str, Any], repository: dict[str, Any], found: PollRound) -> int:
        key = COMMENT_CURSOR_KEY.format(repo=self.repo, issue=issue["number"])
        since = self.inbox.get(key)
        params = {"per_page": "100", **({"since": since} if since else {})}
        comments = self._get_list(f"/repos/{self.repo}/issues/{issue['number']}/comments", params, found)
        if comments is None:
            return 0
        queued, newest = 0, since
        for comment in comments:
            updated = comment.get("updated_at") or comment.get("created_at")
            if updated and (newest is None or updated > newest):
                newest = updated
            if is_own_comment(comment.get("body")):
                continue
            payload = {
                "action": "created",
                "issue": issue,
                "comment": comment,
                "repository": repository,
                "sender": comment.get("user") or {},
            }
            if self.inbox.accept(
                f"poll:comment:{comment['id']}", "issue_comment", json.dumps(payload).encode()
            ):
                queued += 1
        if newest and newest != since:
            self.inbox.put(key, newest)
        return queued

    def _get_list(self, path: str, params: dict[str, str], found: PollRound) -> list[dict] | None:
        """Every page of a list; None when GitHub says nothing changed (304 on the first page)."""
        url, query, items, first = path, params, [], True
        while url:
            # Keyed without `since`: a moved cursor with the same answer is still a 304.
            stable = {k: v for k, v in params.items() if k != "since"}
            key = ETAG_KEY.format(url=f"{path}?{json.dumps(stable, sort_keys=True)}")
            headers = {}
            if first and (etag := self.inbox.get(key)):
                headers["If-None-Match"] = etag
            try:
                response = self.http.get(url, params=query, headers=headers)
            except httpx.HTTPError as exc:
                raise ExternalServiceError(f"GitHub could not be reached: {exc}", transient=True) from exc
            found.requests += 1
            if response.status_code == 304:
                found.not_modified += 1
                return None
            self._check(response)
            if first and response.headers.get("ETag"):
                self.inbox.put(key, response.headers["ETag"])
            page = response.json()
            if not isinstance(page, list):
                raise ExternalServiceError(f"GitHub answered {path} with something other than a list")
            items += page
            url = response.links.get("next", {}).get("url")
            query, first = None, False
        return items

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            self._failures = 0
            return
        headers = response.headers
        wait = None
        if "Retry-After" in headers:
            try:
                wait = float(headers["Retry-After"])
            except ValueError:
                wait = 60.0
        elif headers.get("X-RateLimit-Remaining") == "0" and "X-RateLimit-Reset" in headers:
            wait = max(float(headers["X-RateLimit-Reset"]) - self.clock(), 1.0)
        if wait is not None and status in (403, 429):
            raise GitHubAskedToWait(wait, f"GitHub rate limit ({status}); waiting {wait:.0f} s")
        if status >= 500 or status == 429:
            self._failures += 1
            wait = min(2.0**self._failures, MAX_BACKOFF_S)
            raise GitHubAskedToWait(wait, f"GitHub failed ({status}); trying again in {wait:.0f} s")
        raise ExternalServiceError(
            f"GitHub answered {status} to {response.request.url.path}: {response.text[:200]}",
            status=status,
        )

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, interval: float = 60.0) -> None:
        while not stop.is_set():
            wait = interval
            try:
                found = self.poll_once()
                if found.queued:
                    log.info("poll: %d new event(s)", found.queued)
            except GitHubAskedToWait as limited:
                log.warning("%s", limited)
                wait = max(limited.wait, interval)
            except ExternalServiceError as error:
                log.warning("poll failed: %s", error)
                wait = max(interval, min(2.0 ** (self._failures + 1), MAX_BACKOFF_S))
                self._failures += 1
            stop.wait(wait)

    def _has_label(self, issue: dict[str, Any]) -> bool:
        try:
            return self.label in label_names(issue)
        except ValueError:  # labels not as GitHub sends them: queued, and the handler says why it ignores it
            return False

    def close(self) -> None:
        self.http.close()
