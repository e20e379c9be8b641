"""Retraining proposals: the GitHub issue (or store file) a firing trigger opens, and how to read one.

One open issue per model and trigger kind, labelled `mlops:retrain-proposal` (never `mlops:train`:
nothing trains without a person) and found again by the hidden marker at the top of its body.
Its body holds the model's own spec pointed at the production traffic that fired the trigger,
exported as a dataset (`datasets/<id>/raw/train.csv` in the store, with the delayed labels where
they arrived), in a fenced yaml block the spec parser reads; then the evidence and its plots.

An authorised `/approve-retrain` or the label `mlops:train` starts it through the usual loop: the
bridge reads the spec with `spec_from_proposal(issue.body)`, as it reads any training issue.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from issueops.errors import ExternalServiceError, InvalidInput, IssueOpsError, SpecError
from issueops.github import GitHubClient, Issue
from issueops.spec.body import InputCheck, TrainingSpec, parse_issue_body, validate_spec
from issueops.store import ObjectStore

from .inference_log import InferenceLog
from .payloads import MONITORING_PREFIX
from .performance import labelled_rows
from .proposal_ref import (  # noqa: F401 - re-exported: the names callers know proposals by
    APPROVE_COMMAND,
    PROPOSAL_LABEL,
    ProposalRef,
    check_proposal_spec,
    proposal_marker,
    proposal_ref,
    update_marker,
)

log = logging.getLogger("issueops.monitoring")

TRAIN_LABEL = "mlops:train"  # the bridge's label (issueops.bridge.events.TRAIN_LABEL)
MAX_BODY_BYTES = 60_000  # GitHub takes 65,536 characters; the spec parser reads bodies up to 64 KiB
OPEN_ATTEMPTS = 3  # tries to open an issue, each after looking for it again
MAX_PLOTS = 6


def spec_from_proposal(body: str, *, check_inputs: InputCheck | None = None) -> TrainingSpec:
    """The training spec of a proposal issue, as `/approve-retrain` starts it: the body's yaml block,
    validated like any issue body. InvalidInput when the body is no proposal or its spec (edited
    since) no longer holds, or names another model than the proposal's."""
    ref = proposal_ref(body)
    if ref is None:
        raise InvalidInput(
            f"This issue is not a retraining proposal (no issueops marker); {APPROVE_COMMAND} applies to "
            f"issues labelled {PROPOSAL_LABEL}."
        )
    spec = parse_issue_body(body, check_inputs=check_inputs)
    check_proposal_spec(body, spec.model_name)
    return spec


# ---------------------------------------------------------------------- the new data window


@dataclass
class ExportedWindow:
    """Production traffic written as a dataset the spec can point at."""

    dataset_id: str
    key: str  # datasets/<id>/raw/train.csv
    rows: int
    labelled: int  # rows with a delayed label (supervised models)
    target: str | None
    since: str | None
    until: str | None
    ready: bool  # a supervised model needs labelled rows to train on
    note: str = ""


def window_dataset_id(model: str, trigger: str, moment: datetime) -> str:
    """`<model>-<trigger>-<YYYYMMDDTHHMMSS>`: a new id per export, so a run's data never changes."""
    return f"{model[:100]}-{trigger}-{moment:%Y%m%dT%H%M%S}"


def export_window(
    store: ObjectStore,
    log: InferenceLog,
    labels: pd.DataFrame,
    *,
    dataset_id: str,
    target: str | None,
    supervised: bool,
) -> ExportedWindow:
    """Write the logged rows of `log` as datasets/<dataset_id>/raw/train.csv.

    Supervised: the rows that have a delayed label, with it in the `target` column (every row with
    an empty target when none has one yet: the window is kept, the spec is not ready). Otherwise
    every row, features only.
    """
    features = log.features.reset_index(drop=True)
    labelled = 0
    ready, note = True, ""
    if supervised:
        column = target or "target"
        positions, values = labelled_rows(log, labels)
        labelled = len(positions)
        if labelled:
            frame = features.iloc[positions].reset_index(drop=True)
            frame[column] = values
        else:
            frame = features.assign(**{column: np.nan})
            ready = False
            note = (
                f"none of the {log.rows} logged rows has a delayed label yet, and a supervised model needs "
                f"them: send them with `issueops monitor feedback {log.model} FILE` (keyed by request_id), "
                "then run `issueops monitor check --open-issues` again"
            )
        target = column
    else:
        frame, target = features, None
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    key = f"datasets/{dataset_id}/raw/train.csv"
    store.put_bytes(key, buffer.getvalue().encode())
    return ExportedWindow(
        dataset_id=dataset_id,
        key=key,
        rows=len(frame),
        labelled=labelled,
        target=target,
        since=log.since.isoformat(timespec="seconds") if log.since else None,
        until=log.until.isoformat(timespec="seconds") if log.until else None,
        ready=ready,
        note=note,
    )


def proposed_spec(
    recorded: Mapping[str, Any], model: str, window: ExportedWindow | None
) -> tuple[dict[str, Any], list[str]]:
    """The version's spec pointed at the exported window (same model name, so a retrain registers a
    new version of it), and the problems validate_spec finds in it (none for a sound spec)."""
    spec = {k: v for k, v in recorded.items() if v is not None and v != {}}
    spec["model_name"] = model
    if window is not None:
        spec["dataset_id"] = window.dataset_id
        if window.target:
            spec["target"] = window.target
        else:
            spec.pop("target", None)
    try:
        validate_spec(dict(spec))
    except SpecError as error:
        return spec, error.problems
    return spec, []


# ---------------------------------------------------------------------- rendering


@dataclass
class Proposal:
    """Everything a proposal says, rendered for an issue or the store."""

    model: str
    trigger: str
    version: int
    title: str
    summary: str  # why, one sentence
    evidence: str  # markdown
    production_since: str
    spec: dict[str, Any] | None  # None: the version's spec was not found
    spec_problems: list[str] = field(default_factory=list)
    window: ExportedWindow | None = None
    plots: list[str] = field(default_factory=list)  # markdown image or link lines
    policy: str = ""  # the trigger settings, one line
    checked_at: str = ""


def render_body(proposal: Proposal) -> str:
    """The issue body (also the store file): marker, why, spec, how to approve, evidence, plots."""
    parts = [
        proposal_marker(proposal.model, proposal.trigger),
        f"## Retraining proposal: `{proposal.model}` ({proposal.trigger})",
        f"**Why:** {proposal.summary} Version {proposal.version} has been in production since "
        f"{proposal.production_since}.",
        "### Proposed spec",
        _spec_section(proposal),
        "### To retrain",
        "Nothing trains until a person says so. Someone with write access to the repository comments "
        f"`{APPROVE_COMMAND}` (or adds the label `{TRAIN_LABEL}`), and the spec above runs through the "
        f"usual loop; edit it first to change it. The new version replaces version {proposal.version} "
        "only if it meets the threshold and is not worse than production on the new test split by more "
        "than `max_regression`. Close this issue to decline; a new one opens if the trigger fires again.",
    ]
    tail = [
        f"<sub>`issueops monitor check` at {proposal.checked_at}. {proposal.policy}</sub>",
    ]
    evidence = ["### Evidence", proposal.evidence]
    plots = ["### Plots", "\n".join(proposal.plots)] if proposal.plots else []
    return _fit("\n\n".join(parts), evidence, plots, "\n\n".join(tail))


def _spec_section(proposal: Proposal) -> str:
    if proposal.spec is None:
        return (
            f"The spec version {proposal.version} was trained with was not found in the store (its run's "
            "request.json), so none is proposed: open a training issue with the spec you want."
        )
    lines = []
    window = proposal.window
    if window is not None:
        what = (
            f"{window.rows} rows, {window.labelled} of them with delayed labels"
            if window.target
            else f"{window.rows} rows"
        )
        lines.append(
            f"The spec version {proposal.version} was trained with, pointed at the production traffic "
            f"logged from {said_time(window.since)} to {said_time(window.until)}: {what}, exported as dataset "
            f"`{window.dataset_id}` (`{window.key}` in the object store)."
        )
        if window.note:
            lines.append(f"**Not ready:** {window.note}.")
    else:
        lines.append(f"The spec version {proposal.version} was trained with, unchanged.")
    if proposal.spec_problems:
        lines.append("**The spec no longer validates:** " + " ".join(proposal.spec_problems))
    block = yaml.safe_dump(proposal.spec, sort_keys=False, allow_unicode=True, default_flow_style=False)
    lines.append(f"```yaml\n{block.rstrip()}\n```")
    return "\n\n".join(lines)


def said_time(moment: datetime | str | None) -> str:
    """A time as proposals and the check's output say it: 2026-03-01 12:00 UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment is None:
        return "the start"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fit(head: str, evidence: list[str], plots: list[str], tail: str) -> str:
    """The body within MAX_BODY_BYTES: the evidence loses lines from its end before anything else."""

    def joined(parts: list[str]) -> str:
        return "\n\n".join([head, *parts, *plots, tail]) + "\n"

    body, lines = joined(evidence), evidence[1].split("\n")
    while len(body.encode()) > MAX_BODY_BYTES and lines:
        lines = lines[: len(lines) * 3 // 4]
        cut = (
            "\n".join(lines)
            + "\n\n(cut to fit the issue: `issueops monitor drift --json` gives every feature)"
        )
        body = joined([evidence[0], cut])
    return body


def render_update(model: str, trigger: str, headline: str, text: str, evidence: str = "") -> str:
    """A comment on a proposal: still firing, firing again, or resolved."""
    parts = [update_marker(model, trigger), f"**{headline}** {text}"]
    if evidence:
        parts.append(evidence)
    body = "\n\n".join(parts)
    while len(body.encode()) > MAX_BODY_BYTES:
        body = body[: len(body) * 3 // 4].rsplit("\n", 1)[0] + "\n\n(cut)"
    return body


# ---------------------------------------------------------------------- GitHub and the store


def find_proposal_issue(github: GitHubClient, model: str, trigger: str) -> Issue | None:
    """The open proposal issue of `model` and `trigger` (the lowest number if a race made two)."""
    marker = proposal_marker(model, trigger)
    found = [i for i in github.list_labelled_issues(PROPOSAL_LABEL) if marker in i.body]
    return min(found, key=lambda i: i.number) if found else None


def open_proposal_issue(github: GitHubClient, proposal: Proposal, body: str) -> tuple[Issue, bool]:
    """The proposal's issue, opened once: (issue, True) when this call opened it, (issue, False)
    when one was open already. A failed open is tried again only after looking again, because
    GitHub may have opened it before its answer failed; what still fails is raised."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        existing = find_proposal_issue(github, proposal.model, proposal.trigger)
        if existing is not None:
            return existing, attempt > 1  # after a failed open: the one we opened
        try:
            return github.create_issue(proposal.title, body, [PROPOSAL_LABEL]), True
        except ExternalServiceError as error:
            if not error.transient or attempt == OPEN_ATTEMPTS:
                raise
            log.warning("%s; looking for the issue again before another try", error)
    raise AssertionError("unreachable")  # pragma: no cover


def proposals_prefix(model: str) -> str:
    return f"{MONITORING_PREFIX}/{model}/proposals"


def store_proposal(store: ObjectStore, proposal: Proposal, body: str, moment: datetime) -> str:
    """Write the proposal's body to monitoring/<model>/proposals/<stamp>-<trigger>.md; its key."""
    key = f"{proposals_prefix(proposal.model)}/{moment:%Y%m%dT%H%M%S}-{proposal.trigger}.md"
    store.put_bytes(key, body.encode())
    return key


def attach_plots(
    github: GitHubClient | None,
    store: ObjectStore,
    paths: Sequence[str],
    *,
    folder: str,
    branch: str,
) -> list[str]:
    """Markdown for the plots: committed to `branch` of the repository under `folder` (one commit,
    as the training history does) and shown as images; when that fails or there is no GitHub, the
    store addresses as links. The PNGs go to the store under `folder` either way."""
    paths = [Path(p) for p in paths[:MAX_PLOTS]]
    if not paths:
        return []
    for path in paths:
        store.put_bytes(f"{folder}/{path.name}", path.read_bytes())
    if github is not None:
        try:
            files = {f"{folder}/{p.name}": p.read_bytes() for p in paths}
            sha, _ = github.commit_files(files, f"issueops: plots of {folder}", branch)
            web = github.web_url()
            return [f"![{p.stem}]({web}/blob/{sha}/{folder}/{p.name}?raw=true)" for p in paths]
        except IssueOpsError as error:
            log.warning("plots not committed (%s); linking the store instead", error)
    return [f"- {p.stem}: `{store.uri(f'{folder}/{p.name}')}`" for p in paths]
