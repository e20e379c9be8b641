"""The series of issueops.monitoring.metrics where they are served: one real request through the
bridge's webhook and worker on the local runner read back from `bridge serve`'s /metrics, the
operator's /metrics, and the JSON log line of a step. Read with prometheus_client's own parser."""

from __future__ import annotations

import io
import json
import logging
import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from issueops.lifecycle.state_machine import PHASES, Phase
from issueops.logs import JsonFormatter
from issueops.pipeline.policy import STEP_POLICIES
from issueops.pipeline.runs import PIPELINE_STEPS
from tests.test_bridge import SPEC, Hub, gh, registered, settings  # noqa: F401 - fixtures
from tests.test_operator import cluster, operator, phase, spec  # noqa: F401 - fixtures

DECISIONS = {"pass", "retrain", "fail", "error"}
CHANNELS = {"console", "github", "slack", "teams", "discord", "email"}


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every issueops_* sample of an exposition: (name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("issueops_")
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(url, timeout=10)
    answer.raise_for_status()
    return samples_of(answer.text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_local_request_is_counted_by_phase_decision_step_and_failed_channel(gh, settings, monkeypatch):  # noqa: F811
    # A Slack webhook nobody answers: the notify step's delivery fails (after its retries).
    monkeypatch.setenv("ISSUEOPS_SLACK_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/services/T0/B0/x")
    hub = Hub(gh, settings)
    metrics_url = f"{hub.url}/metrics"
    before = scrape(metrics_url)
    hub.start_worker()
    try:
        number = gh.create_issue(
            "Train", body=SPEC.format(threshold=0.5, max_retry=0), labels=["mlops:train"], user="alice"
        )
        assert hub.deliver("issues", hub.issue_event("opened", number, "alice")).status_code == 202
        done = hub.wait_for(lambda: (r := hub.request(number)) and not r.active and r, what="the attempt")
        after = scrape(metrics_url)
    finally:
        hub.close()
    assert done.phase == Phase.SUCCEEDED, done.message

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for reached in (Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED):
        assert grew("issueops_requests_total", phase=reached) == 1, reached
    assert grew("issueops_attempts_total", decision="pass") == 1
    for step in (*PIPELINE_STEPS, "notify"):
        assert grew("issueops_step_duration_seconds_count", step=step) == 1, step
    assert grew("issueops_notification_failures_total", channel="slack") == 1
    assert ("issueops_queue_depth", ()) in after

    # Labels hold bounded sets only; the issue number and the run id went to the logs.
    bounded = {"phase": set(PHASES), "decision": DECISIONS, "channel": CHANNELS, "step": set(STEP_POLICIES)}
    for name, labels in after:
        for label, text in labels:
            assert label not in ("issue", "issue_number", "run_id", "execution_id"), name
            assert done.run_id not in text, (name, label)
            if label in bounded:
                assert text in bounded[label], (name, label, text)


def test_the_operator_serves_metrics_on_its_port(cluster, monkeypatch):  # noqa: F811
    port = free_port()
    monkeypatch.setenv("ISSUEOPS_OPERATOR_METRICS_PORT", str(port))
    with operator() as runner:
        cluster.create("bad", spec(0.9, 99))  # max_retry out of range: Failed at once
        cluster.wait("bad", lambda b: phase(b) == "Failed", 30, "rejection")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert runner.exception is None
    assert value(samples, "issueops_requests_total", phase="Failed") >= 1


def test_a_steps_json_log_lines_carry_its_run_and_issue(store, monkeypatch):
    from issueops.pipeline.runs import RunRecord, step_guard

    run_id = "train-20260101-000000-abcd"
    RunRecord(store, run_id).write("request.json", {"issue": 42, "attempt": 1})
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("issueops-step"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with step_guard(store, run_id, "evaluate"):
            logging.getLogger("issueops.evaluation.supervised").info("scored")
    finally:
        root.removeHandler(handler)
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    scored = next(e for e in entries if e["message"] == "scored")
    assert scored["execution_id"] == run_id and scored["issue_number"] == 42
    end = next(e for e in entries if e["message"].startswith("step evaluate done"))
    assert end["status"] == "done" and isinstance(end["duration_ms"], int)
    assert end["execution_id"] == run_id and end["issue_number"] == 42


def test_production_and_drift_gauges_come_from_the_registry_and_triggers_json(gh, settings, tmp_path):  # noqa: F811
    from issueops.monitoring.metrics import exposition, observe_models
    from issueops.monitoring.trigger_state import ModelState, save_state
    from issueops.registry.lifecycle import Registry
    from issueops.store import open_store

    registered(settings, tmp_path)  # bc-rf v1 in production
    store = open_store(settings)
    save_state(
        store, ModelState("bc-rf", version=1, checked_at="2026-01-02T03:04:05+00:00", drift_share=0.25)
    )
    observe_models(Registry.from_settings(settings), store)
    samples = samples_of(exposition()[0].decode())
    assert value(samples, "issueops_production_version_info", model="bc-rf", version="1") == 1
    assert value(samples, "issueops_model_last_trained_timestamp_seconds", model="bc-rf") > 0
    assert value(samples, "issueops_drift_share", model="bc-rf") == 0.25
    checked = value(samples, "issueops_drift_last_check_timestamp_seconds", model="bc-rf")
    assert checked == 1767323045.0  # 2026-01-02T03:04:05Z
