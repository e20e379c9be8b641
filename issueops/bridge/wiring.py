"""open_bridge: the GitHub bridge assembled from settings."""

from __future__ import annotations

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
        running_limit,
    )
    from issueops.lifecycle.request_store import RequestStore

    # How the bridge behaves is read now, as it opens; where its state lives comes with `settings`.
    behaviour = Settings.from_env()
    github = github or GitHubClients(settings, throttle=behaviour.github_throttle)
    if cluster is None:
        cluster = behaviour.bridge_mode == "cluster"
    if cluster:
        from issueops.bridge.kube import KubernetesBook

        book = KubernetesBook.from_settings(behaviour)
    else:
        if backend is None:
            from issueops.bridge.backends import LocalRunBackend

            backend = LocalRunBackend(settings)
        controller = RequestController(settings, backend, IssueReporter(github), timeout_s=timeout_s)
        book = LocalBook(
            settings,
            RequestStore(settings.home),
            controller,
            max_running=max_running if max_running is not None else running_limit(behaviour),
        )
    return Bridge(
        book,
        Inbox.for_home(settings.home),
        github,
        allowlist=allowlist if allowlist is not None else behaviour.allowlist,
        label=behaviour.label,
        repository=settings.github_repository,
    )
