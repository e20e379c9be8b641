"""The closed loop, end to end, against the GitHub double: monitor → issue → approve → retrain →
champion/challenger → promote.

A forest is trained, registered, packaged (with its reference profile) and put in production by
the pipeline's own steps; a real `issueops serve` answers traffic whose meaning has changed, and
delayed labels say so. `issueops monitor check --open-issues` opens one retraining proposal; an
authorised `/approve-retrain`, delivered as a signed webhook to the bridge, starts one request
from the proposal's spec; the bridge's local runner retrains on the exported traffic, the judge
scores production on the same new test split, and the better new version is promoted.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from issueops.bridge.events import TRAIN_LABEL
from issueops.cli import main
from issueops.config import Settings
from issueops.lifecycle.state_machine import Phase
from issueops.monitoring.proposals import PROPOSAL_LABEL, proposal_ref
from issueops.reporting.status import STATUS_MARKER
from tests import test_bridge
from tests.test_bridge import Hub
from tests.test_monitoring_serve import post_json, start_server, stop_server
from tests.test_serving import RF, RF_BODY, train_and_register

ROWS_PER_REQUEST, REQUESTS = 100, 3
# The bridge tests' GitHub double (alice maintains the repository) and settings pointing at it.
gh, settings = test_bridge.gh, test_bridge.settings
CHECK = ["monitor", "check", "--open-issues", "--model", RF, "--cooldown", "1s", "--json"]


def production_v1(settings: Settings) -> tuple[str, object]:
    """bc-rf v1 in production, packaged with its reference profile: (run id, profile)."""
    from issueops.monitoring.profile import load_reference_profile
    from issueops.pipeline.steps import deploy_step, package_step, promote_step
    from issueops.store import open_store

    run = train_and_register(RF_BODY.format(n=10, extra="max_retry: 0\n"))
    package_step(run["run_id"])
    promote_step(run["run_id"])
    assert deploy_step(run["run_id"])["served_version"] == 1
    return run["run_id"], load_reference_profile(open_store(settings), RF, 1)


def serve_changed_world(settings: Settings, profile, tmp_path) -> Path:
    """Traffic through a real `issueops serve`, shifted from training, whose true class is now
    decided by one feature alone; the delayed labels (request_id, row, label) of what it answered."""
    features = profile.feature_columns["input"]
    rows = profile.sample[features].to_numpy(np.float64)
    rng = np.random.default_rng(7)
    traffic = rows[rng.choice(len(rows), ROWS_PER_REQUEST * REQUESTS)] * 1.15
    cut = np.median(traffic[:, 0])
    world = {"home": settings.home, "env": dict(os.environ)}
    server = start_server(world)
    labels = []
    try:
        for i, chunk in enumerate(np.split(traffic, REQUESTS)):
            body = {
                "id": f"q{i}",
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(chunk.shape),
                        "datatype": "FP64",
                        "data": chunk.ravel().tolist(),
                    }
                ],
            }
            status, answer = post_json(server, RF, body)
            assert status == 200 and answer["id"] == f"q{i}", answer
            labels += [
                {"request_id": f"q{i}", "row": row, "label": profile.classes[int(value > cut)]}
                for row, value in enumerate(chunk[:, 0])
            ]
    finally:
        assert stop_server(server) == 0  # SIGTERM writes what the logger still holds
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["request_id", "label", "row"])
        writer.writeheader()
        writer.writerows(labels)
    return path


def check(capsys) -> dict[str, dict]:
    """One `issueops monitor check --open-issues`: the model's triggers by kind."""
    assert main(CHECK) == 0, capsys.readouterr().err
    (model,) = json.loads(capsys.readouterr().out)["models"]
    return {t["kind"]: t for t in model["triggers"]}


def proposals(gh) -> list:
    return [i for i in gh.state.issues.values() if PROPOSAL_LABEL in i.labels]


def test_monitor_opens_a_proposal_that_an_approval_retrains_and_promotes(
    gh, settings, tmp_path, capsys, monkeypatch
):
    from issueops.pipeline.runs import RunRecord
    from issueops.registry.lifecycle import Registry
    from issueops.store import open_store

    for name in ("ISSUEOPS_MANUAL_APPROVAL", "ISSUEOPS_PAYLOAD_LOG"):  # promoted and logged as by default
        monkeypatch.delenv(name, raising=False)
    first_run, profile = production_v1(settings)
    labels = serve_changed_world(settings, profile, tmp_path)
    assert main(["monitor", "feedback", RF, str(labels)]) == 0, capsys.readouterr().err
    capsys.readouterr()

    performance = check(capsys)["performance"]
    assert performance["firing"] and performance["details"]["labelled_rows"] == ROWS_PER_REQUEST * REQUESTS
    (issue,) = proposals(gh)
    assert proposal_ref(issue.body).trigger == "performance" and TRAIN_LABEL not in issue.labels

    hub = Hub(gh, settings)
    hub.start_worker()
    try:
        assert hub.deliver(
            "issue_comment", hub.comment_event(issue.number, "/approve-retrain", "alice")
        ).is_success
        done = hub.wait_for(
            lambda: (r := hub.request(issue.number)) and not r.active and r, timeout=600, what="the retrain"
        )
    finally:
        hub.close()
    assert done.phase == Phase.SUCCEEDED, done.message
    assert done.requested_by == "alice" and done.spec.dataset_id.startswith(f"{RF}-performance-")
    assert [r.name for r in hub.store.all() if r.issue == issue.number] == [done.name]

    # Judged against production on the retrain's own test split (the exported traffic), and won.
    judgement = RunRecord(open_store(settings), done.run_id).read("judgement.json")
    assert judgement["decision"] == "pass" and judgement["champion"]["version"] == 1
    assert judgement["champion"]["lost"] is False and judgement["value"] > judgement["champion"]["value"]
    registry = Registry.from_settings(settings)
    assert registry.production(RF).version == 2 and done.model_version == "2"
    (status,) = [c.body for c in gh.comments_on(issue.number) if STATUS_MARKER in c.body]
    assert "production v1" in status and "✅ pass" in status

    # The new version is in production: the proposal is resolved, and no second one opens.
    assert check(capsys)["performance"]["action"] == "resolved"
    assert [i.number for i in proposals(gh)] == [issue.number]
    assert any("Resolved:" in c.body for c in gh.comments_on(issue.number))
    assert first_run != done.run_id
