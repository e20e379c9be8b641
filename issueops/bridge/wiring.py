"""open_bridge: the GitHub bridge assembled from settings."""

from __future__ import annotations

import os
from collections.abc import Callable

from issueops.config import Settings
from issueops.github import GitHubClient


def open_bridge(
    settings: Settings,
    *,
    github: Callable[[str | None], GitHubClient | None] | None = None,
    backend=None,
    timeout_s: float | None = None,
    max_running: int | None = None,
    allowlist: frozenset[str] | None = None,
    cluster: bool | None = None,
):
    """The bridge wired from settings: embedded by default, cluster mode when asked or when
    ISSUEOPS_BRIDGE_MODE=cluster (TrainingRequest resources for the operator)."""
    from issueops.bridge.controller import GitHubClients, IssueReporter, RequestController
    from issueops.bridge.inbox import Inbox
    from issueops.bridge.service import (
        Bridge,
        LocalBook,
        allowlist_from_env,
        max_running_from_env,
    )
    from issueops.lifecycle.request_store import RequestStore

    github = github or GitHubClients(
        settings, throttle=os.environ.get("ISSUEOPS_GITHUB_THROTTLE", "1") not in ("0", "false")
    )
    if cluster is None:
        cluster = os.environ.get("ISSUEOPS_BRIDGE_MODE", "embedded").lower() == "cluster"
    if cluster:
        from issueops.bridge.kube import KubernetesBook

        book = KubernetesBook.from_env()
    else:
        if backend is None:
            from issueops.bridge.backends import LocalRunBackend

            backend = LocalRunBackend(settings)
        controller = RequestController(settings, backend, IssueReporter(github), timeout_s=timeout_s)
        book = LocalBook(
            settings,
            RequestStore(settings.home),
            controller,
            max_running=max_running if max_running is not None else max_running_from_env(),
        )
    return Bridge(
        book,
        Inbox.for_home(settings.home),
        github,
        allowlist=allowlist if allowlist is not None else allowlist_from_env(),
        label=os.environ.get("ISSUEOPS_LABEL", "mlops:train"),
        repository=settings.github_repository,
    )
