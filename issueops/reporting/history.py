"""The training history: one markdown file per run, committed once, plots beside it.

`training_history/train-<YYYYMMDD-HHMMSS>-<issue|local>.md`, with its evaluation plots in
`training_history/<same stem>/`. Written to a local git repository (embedded default) or to
a GitHub repository through the API (cluster mode); either way one commit per run, and a
failed write leaves the previous history exactly as it was.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from issueops.config import Settings
from issueops.errors import ExternalServiceError, IssueOpsError
from issueops.github import GitHubClient, html_base_url
from issueops.reporting.status import DECISION_BADGES, cell, format_seconds, format_value
from issueops.results import RunResult, production_note, production_score

log = logging.getLogger(__name__)

HISTORY_DIR = "training_history"
AUTHOR_NAME = "issueops"
AUTHOR_EMAIL = "issueops@localhost"
DEFAULT_BRANCH = "main"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class HistoryRecord:
    path: str  # repository-relative path of the markdown file
    commit_sha: str
    url: str  # where a person opens it: the GitHub page, or a file:// address

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def history_branch() -> str:
    return Settings.from_env().history_branch or DEFAULT_BRANCH


def run_time(result: RunResult) -> datetime:
    """When the run started (UTC), falling back to when it finished, then to now."""
    for text in (result.started_at, result.finished_at):
        if text:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC)


def history_stem(result: RunResult) -> str:
    """`train-20250101-120000-42`, or `...-local` for a run without an issue."""
    issue = str(result.issue) if result.issue is not None else "local"
    return f"train-{run_time(result):%Y%m%d-%H%M%S}-{issue}"


def plot_files(result: RunResult) -> dict[str, Path]:
    """The evaluation plots among the artifacts: PNG files present on this machine."""
    plots: dict[str, Path] = {}
    for name, location in result.artifacts.items():
        if not (name.lower().endswith(".png") or str(location).lower().endswith(".png")):
            continue
        path = Path(location.removeprefix("file://")).expanduser()
        if path.is_file():
            base = Path(name).name if name.lower().endswith(".png") else path.name
            plots[_SAFE_NAME.sub("_", base)] = path
        else:
            log.warning("plot %s is not a local file (%s); linked, not copied", name, location)
    return plots


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _issue_link(result: RunResult, web_base: str) -> str:
    if result.issue is None:
        return "local run (no issue)"
    if result.repository:
        url = f"{web_base}/{result.repository}/issues/{result.issue}"
        return f"[{result.repository}#{result.issue}]({url})"
    return f"#{result.issue}"


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _summary_value(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        text = (
            ", ".join(f"{k}: {v}" for k, v in value.items())
            if isinstance(value, dict)
            else (", ".join(str(v) for v in value))
        )
        return cell(text)
    return format_value(value)


def render_history(
    result: RunResult,
    *,
    plots: Mapping[str, str] | None = None,
    web_base: str = "https://github.com",
    local_paths: bool = True,
) -> str:
    """The markdown for one run. `plots` maps a plot's name to its path relative to the file;
    `local_paths=False` (a file read on GitHub) leaves out artifacts that are paths on this machine."""
    plots = dict(plots or {})
    decision = DECISION_BADGES.get(result.decision, result.decision)
    overview = [
        ("Run", f"`{result.run_id}`"),
        ("Issue", _issue_link(result, web_base)),
        ("Attempt", str(result.attempt)),
        ("Started", cell(result.started_at or "—")),
        ("Finished", cell(result.finished_at or "—")),
        ("Decision", f"**{decision}**"),
    ]
    parts = [f"# Training run {result.run_id}", _table(("", ""), overview)]

    parts += [
        "## Decision",
        f"**{decision}** — {result.message}" if result.message else f"**{decision}**",
    ]
    parts += ["## Spec", f"```yaml\n{_yaml(result.spec).rstrip()}\n```"]

    if result.data_summary:
        rows = [(cell(str(k)), _summary_value(v)) for k, v in result.data_summary.items()]
        parts += ["## Data", _table(("", "value"), rows)]

    production = production_score(result.champion)
    theirs = (result.champion or {}).get("metrics") or {}
    if production is None:
        metric_rows = [
            "| metric | value | threshold |",
            "|---|---|---|",
            f"| **{cell(result.evaluation_metric)}** | **{format_value(result.metric_value)}** "
            f"| {format_value(result.threshold)} |",
        ]
    else:  # production's version on the same data, beside each metric
        metric_rows = [
            f"| metric | value | {production[0]} | threshold |",
            "|---|---|---|---|",
            f"| **{cell(result.evaluation_metric)}** | **{format_value(result.metric_value)}** "
            f"| {production[1]} | {format_value(result.threshold)} |",
        ]
    for name, value in sorted(result.metrics.items()):
        if name != result.evaluation_metric:
            mine = f"| {cell(str(name))} | {format_value(value)} |"
            metric_rows.append(
                f"{mine} |" if production is None else f"{mine} {format_value(theirs.get(name))} | |"
            )
    parts += ["## Metrics", "\n".join(metric_rows)]
    if note := production_note(result.champion):
        parts.append(note)

    model = [
        ("Name", f"`{result.model_name}`" if result.model_name else "—"),
        ("Version", cell(str(result.model_version)) if result.model_version else "—"),
        ("Alias", f"`{result.alias}`" if result.alias else "—"),
        ("Endpoint", cell(result.endpoint) if result.endpoint else "—"),
        ("Served version", cell(result.served_version) if result.served_version else "—"),
    ]
    parts += ["## Model", _table(("", ""), model)]

    if result.steps:
        rows = [
            f"| {cell(s.name)} | {s.status} | {format_seconds(s.seconds) if s.seconds is not None else '—'} |"
            if s.name != "write_history"
            else "| write_history | this commit | — |"  # the step that writes this file
            for s in result.steps
        ]
        parts += ["## Steps", "\n".join(["| step | status | time |", "|---|---|---|", *rows])]

    links = []
    if result.issue is not None and result.repository:
        links.append(f"- Issue: {_issue_link(result, web_base)}")
    for name, location in sorted(result.artifacts.items()):
        target = plots.get(_SAFE_NAME.sub("_", Path(name).name), location)
        if target == location and not local_paths and _on_this_machine(location):
            continue
        links.append(f"- {cell(name)}: [{cell(target)}]({target.replace(' ', '%20')})")
    if links:
        parts += ["## Links", "\n".join(links)]

    if plots:
        images = [f"![{name}]({rel.replace(' ', '%20')})" for name, rel in sorted(plots.items())]
        parts += ["## Plots", "\n\n".join(images)]
    return "\n\n".join(parts) + "\n"


def _on_this_machine(location: str) -> bool:
    return location.startswith("file://") or "://" not in location


def write_history(
    result: RunResult,
    *,
    settings: Settings,
    github: GitHubClient | None = None,
    branch: str | None = None,
) -> HistoryRecord:
    """Render the run's history and commit it: to GitHub when a client is given, else locally.

    GitHub: branch `branch`, else ISSUEOPS_HISTORY_BRANCH, else "main". Local: the git
    repository at settings.history_repo (created when missing), on its current branch.
    """
    stem = history_stem(result)
    plots = plot_files(result)
    message = f"history: run {result.run_id} ({result.decision}), {stem}"
    if github is not None:
        web = _web_base(github)
        return _write_github(
            github,
            stem,
            lambda s: _render(result, s, plots, web, local_paths=False),
            plots,
            message,
            branch or history_branch(),
        )
    repo = settings.history_repo or settings.home / "history"
    web = html_base_url(settings.github_api_url)
    return _write_local(Path(repo), stem, lambda s: _render(result, s, plots, web), plots, message)


def _render(
    result: RunResult, stem: str, plots: Mapping[str, Path], web_base: str, *, local_paths: bool = True
) -> str:
    return render_history(
        result, plots={n: f"{stem}/{n}" for n in plots}, web_base=web_base, local_paths=local_paths
    )


def _web_base(github: GitHubClient) -> str:
    try:
        return github.web_url().removesuffix(f"/{github.repository}")
    except IssueOpsError:
        return html_base_url(github.api_url)


def _write_github(
    github: GitHubClient,
    stem: str,
    render: Callable[[str], str],
    plots: Mapping[str, Path],
    message: str,
    branch: str,
) -> HistoryRecord:
    where = f"{github.repository}@{branch}"
    try:
        # Two runs in the same second for the same issue must not overwrite each other.
        stem = _free_stem(stem, lambda s: github.read_file(f"{HISTORY_DIR}/{s}.md", branch) is None)
        md_path = f"{HISTORY_DIR}/{stem}.md"
        files = {md_path: render(stem).encode()}
        files.update({f"{HISTORY_DIR}/{stem}/{n}": p.read_bytes() for n, p in plots.items()})
        sha, _ = github.commit_files(files, message, branch)
        url = github.blob_url(md_path, sha)
    except ExternalServiceError as error:
        raise ExternalServiceError(
            f"could not write the training history to {where}: {error}",
            transient=error.transient,
            status=error.status,
        ) from error
    except IssueOpsError as error:
        # 401/403/404/409/422 that survived the retries: name it, and nothing was changed.
        raise ExternalServiceError(
            f"could not write the training history to {where}: {error}",
            status=getattr(error, "status", None),
        ) from error
    log.info("training history %s committed to %s (%s)", md_path, where, sha[:12])
    return HistoryRecord(md_path, sha, url)


# ---------------------------------------------------------------------- local git


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ExternalServiceError(
            f"git {args[0]} failed in {repo}: {detail[-1] if detail else done.returncode}"
        )
    return done.stdout.strip()


def _ensure_repo(repo: Path) -> None:
    if shutil.which("git") is None:
        raise ExternalServiceError("git is not installed; it is needed for the local history")
    repo.mkdir(parents=True, exist_ok=True)
    inside = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True, text=True)
    if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != repo.resolve():
        _git(repo, "init", "-q", "-b", DEFAULT_BRANCH)
        log.info("created the history repository %s", repo)


def _free_stem(stem: str, is_free: Callable[[str], bool]) -> str:
    candidate, n = stem, 1
    while not is_free(candidate):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _write_local(
    repo: Path, stem: str, render: Callable[[str], str], plots: Mapping[str, Path], message: str
) -> HistoryRecord:
    _ensure_repo(repo)
    lock_path = Path(_git(repo, "rev-parse", "--absolute-git-dir")) / "issueops-history.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one history writer at a time per repository
        base = repo / HISTORY_DIR
        stem = _free_stem(stem, lambda s: not (base / f"{s}.md").exists() and not (base / s).exists())
        md = base / f"{stem}.md"
        folder = base / stem
        written: list[Path] = []
        try:
            base.mkdir(exist_ok=True)
            md.write_text(render(stem), encoding="utf-8")
            written.append(md)
            if plots:
                folder.mkdir()
                for name, source in plots.items():
                    shutil.copyfile(source, folder / name)
                    written.append(folder / name)
            paths = [str(p.relative_to(repo)) for p in written]
            _git(repo, "add", "--", *paths)
            # Only our paths: whatever else the user has staged stays staged, uncommitted.
            _git(repo, "commit", "-q", "--no-verify", "-m", message, "--", *paths)
        except (OSError, IssueOpsError) as error:
            _undo(repo, written, folder)
            raise ExternalServiceError(f"could not write the training history to {repo}: {error}") from error
        sha = _git(repo, "rev-parse", "HEAD")
    rel = f"{HISTORY_DIR}/{stem}.md"
    log.info("training history %s committed in %s (%s)", rel, repo, sha[:12])
    return HistoryRecord(rel, sha, md.resolve().as_uri())


def _undo(repo: Path, written: list[Path], folder: Path) -> None:
    paths = [str(p.relative_to(repo)) for p in written]
    if paths:
        subprocess.run(
            ["git", "rm", "-q", "--cached", "--ignore-unmatch", "--", *paths],
            cwd=repo,
            capture_output=True,
        )
    for path in written:
        path.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
