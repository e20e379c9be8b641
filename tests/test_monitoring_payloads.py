"""Payload logs: KServe's CloudEvents through the object store (local and a real S3), the batching
logger's bound and sample rate, KServe's binary-mode POSTs, and damaged files."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from issueops.config import payload_sample_rate
from issueops.errors import InvalidInput
from issueops.monitoring.inference_log import NeverServed, iter_rows, read_inference_log
from issueops.monitoring.payload_logger import PayloadLogger
from issueops.monitoring.payloads import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    events_from_http,
    inference_events,
    parse_since,
    v2_tensors,
    write_events,
)
from issueops.store import LocalStore

COLUMNS = {"input": ["age", "income"], "categorical": ["city"]}
_ids = itertools.count()


def inference(rows: int = 1, *, seed: int = 0):
    """A V2 request and response as `issueops serve` answers a classifier."""
    rng = np.random.default_rng(seed)
    request = {
        "inputs": v2_tensors(
            {
                "input": rng.normal(40, 10, (rows, 2)).astype(np.float32),
                "categorical": rng.choice(["paris", "lyon", ""], (rows, 1)).astype(object),
            }
        )
    }
    proba = rng.dirichlet([1, 1], rows).astype(np.float32)
    response = {
        "model_name": "churn",
        "model_version": "2",
        "outputs": v2_tensors({"label": proba.argmax(1), "probabilities": proba}),
    }
    return request, response


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path, monkeypatch, home):
    """The local store, and a real S3 server (SeaweedFS)."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from issueops.config import Settings
    from issueops.store import S3Store, open_store

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"payloads-{next(_ids)}"
    monkeypatch.setenv("ISSUEOPS_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("ISSUEOPS_S3_BUCKET", bucket)
    store = open_store(Settings.from_env())
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket=bucket)
    return store


def test_logged_inferences_come_back_as_joined_feature_rows(any_store):
    logger = PayloadLogger(any_store, batch_size=4, flush_interval_s=60)
    sent = [inference(rows=1 + i % 3, seed=i) for i in range(10)]
    for i, (request, response) in enumerate(sent):
        assert logger.log("churn", 2, request, response, request_id=f"req-{i}")
    logger.close()
    assert logger.stats.logged == 10 and logger.stats.dropped == 0 and logger.stats.batches == 3

    keys = any_store.list("monitoring/churn/2")
    today = datetime.now(UTC).date().isoformat()
    assert len(keys) == 3 and all(
        k.startswith(f"monitoring/churn/2/{today}/") and k.endswith(".jsonl.gz") for k in keys
    )
    events = [json.loads(line) for line in gzip.decompress(any_store.get_bytes(keys[0])).splitlines()]
    assert {e["type"] for e in events} == {REQUEST_TYPE, RESPONSE_TYPE}
    first = events[0]
    assert first["specversion"] == "1.0" and first["datacontenttype"] == "application/json"
    assert first["inferenceservicename"] == "churn" and first["modelversion"] == "2"
    assert sorted(e["id"] for e in events if e["type"] == REQUEST_TYPE) == sorted(
        e["id"] for e in events if e["type"] == RESPONSE_TYPE
    )

    log = read_inference_log(any_store, "churn", 2, feature_columns=COLUMNS)
    assert log.rows == sum(1 + i % 3 for i in range(10)) == 19
    assert list(log.features.columns) == ["age", "income", "city"]
    assert log.features["age"].dtype == np.float32
    assert set(log.features["city"].dropna()) <= {"paris", "lyon"} and log.features["city"].isna().any()
    assert log.outputs["probabilities"].shape == (19, 2) and log.outputs["label"].shape == (19,)
    first_request = log.keys.index[log.keys["request_id"] == "req-2"]
    assert list(log.keys.loc[first_request, "row"]) == [0, 1, 2]
    np.testing.assert_allclose(
        log.features.loc[first_request, ["age", "income"]].to_numpy(),
        np.reshape(sent[2][0]["inputs"][0]["data"], (3, 2)),
        rtol=1e-6,
    )
    row = next(r for r in iter_rows(log) if r["request_id"] == "req-0")
    assert set(row) >= {
        "request_id",
        "row",
        "time",
        "version",
        "age",
        "income",
        "city",
        "label",
        "probabilities",
    }
    assert log.summary() == {
        "rows": 19,
        "files": 3,
        "skipped_files": 0,
        "skipped_lines": 0,
        "unanswered_requests": 0,
    }


def test_the_window_selects_by_request_time_and_plain_files_read_too(tmp_path):
    store = LocalStore(tmp_path)
    now = datetime.now(UTC)
    old = inference_events("churn", 2, *inference(), request_id="old", time=now - timedelta(days=3))
    new = inference_events("churn", 2, *inference(), request_id="new", time=now - timedelta(hours=1))
    keys = write_events(store, [*old, *new], compress=False)
    assert len(keys) == 2 and all(k.endswith(".jsonl") for k in keys)  # one object per day
    recent = read_inference_log(store, "churn", 2, since=parse_since("1d", now))
    assert list(recent.keys["request_id"]) == ["new"]
    everything = read_inference_log(store, "churn", 2, since=parse_since("7d", now))
    assert list(everything.keys["request_id"]) == ["old", "new"]  # in time order
    assert list(everything.features.columns) == ["input_0", "input_1", "categorical_0"]  # no names given


def test_a_model_never_served_is_one_sentence(tmp_path):
    with pytest.raises(
        NeverServed,
        match=r"^Version 4 of churn has never been served: no inference logs under monitoring/churn/4/\.$",
    ):
        read_inference_log(LocalStore(tmp_path), "churn", 4)
    assert NeverServed.exit_code == 2


def test_damaged_files_and_lines_are_skipped_and_counted(tmp_path):
    store = LocalStore(tmp_path)
    good = [e for i in range(3) for e in inference_events("churn", 2, *inference(), request_id=f"g{i}")]
    write_events(store, good)
    day = datetime.now(UTC).date().isoformat()
    prefix = f"monitoring/churn/2/{day}"
    lines = [json.dumps(e).encode() for e in inference_events("churn", 2, *inference(), request_id="cut")]
    whole = gzip.compress(b"\n".join([*lines, *lines]) + b"\n")
    store.put_bytes(f"{prefix}/000001-truncated.jsonl.gz", whole[: len(whole) * 2 // 3])
    store.put_bytes(f"{prefix}/000002-garbage.jsonl.gz", b"this is not gzip at all")
    plain = [
        *[json.dumps(e) for e in inference_events("churn", 2, *inference(), request_id="p1")],
        "{not json",
        json.dumps({"type": "org.example.other", "id": "x", "data": {}}),
        json.dumps(inference_events("churn", 2, *inference(), request_id="p2")[0])[:50],  # no newline
    ]
    store.put_bytes(f"{prefix}/000003-lines.jsonl", "\n".join(plain).encode())
    only_request = inference_events("churn", 2, *inference(), request_id="lonely")[0]
    write_events(store, [only_request])

    log = read_inference_log(store, "churn", 2)
    # Every intact request is read; of the truncated file, only lines that were complete.
    assert {"g0", "g1", "g2", "p1"} <= set(log.keys["request_id"]) <= {"g0", "g1", "g2", "p1", "cut"}
    skipped = dict(s.split(": ", 1) for s in log.skipped_files)
    assert set(skipped) == {
        f"{prefix}/000001-truncated.jsonl.gz",
        f"{prefix}/000002-garbage.jsonl.gz",
        f"{prefix}/000003-lines.jsonl",
    }
    assert skipped[f"{prefix}/000002-garbage.jsonl.gz"] == "not gzip, or corrupt"
    assert log.skipped_lines >= 3  # the bad JSON, the foreign event, the cut-off line
    assert log.unanswered == 1 and "lonely" not in set(log.keys["request_id"])


class StalledStore(LocalStore):
    """A local store whose writes wait until released: a sink that stalls."""

    def __init__(self, root):
        super().__init__(root)
        self.entered, self.release = threading.Event(), threading.Event()

    def put_bytes(self, key, data):
        self.entered.set()
        self.release.wait(30)
        return super().put_bytes(key, data)


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path):
    store = StalledStore(tmp_path)
    logger = PayloadLogger(store, max_queue=5, batch_size=1, flush_interval_s=0.01)
    request, response = inference()
    assert logger.log("churn", 2, request, response)
    assert store.entered.wait(10)  # the thread holds the first inference, stuck in the store
    accepted = [logger.log("churn", 2, request, response) for _ in range(20)]
    assert accepted.count(True) == 5 and logger.stats.dropped == 15
    store.release.set()
    logger.close()
    assert logger.stats.logged == 6 and logger.stats.dropped == 15
    assert read_inference_log(store, "churn", 2).rows == 6


def test_sample_rate_logs_a_stable_share_and_zero_turns_logging_off(tmp_path):
    store = LocalStore(tmp_path)
    request, response = inference()
    off = PayloadLogger(store, sample_rate=0)
    assert off.enabled is False and off.log("churn", 2, request, response) is False
    assert off._thread is None and store.list("monitoring") == []

    half = PayloadLogger(store, sample_rate=0.5)
    decisions = [half.log("churn", 2, request, response, request_id=f"id-{i}") for i in range(400)]
    half.close()
    assert 150 < sum(decisions) < 250
    assert half.stats.logged + half.stats.sampled_out == 400
    again = PayloadLogger(LocalStore(tmp_path / "again"), sample_rate=0.5)
    assert [again.log("churn", 2, request, response, request_id=f"id-{i}") for i in range(400)] == decisions
    again.close()


@pytest.mark.parametrize(("value", "rate"), [(None, 1.0), ("", 1.0), ("0", 0.0), ("0.25", 0.25), ("1", 1.0)])
def test_payload_log_setting(value, rate):
    assert payload_sample_rate(value) == rate


@pytest.mark.parametrize("value", ["half", "2", "-0.1"])
def test_payload_log_setting_refuses_what_is_not_a_fraction(value):
    with pytest.raises(InvalidInput, match="ISSUEOPS_PAYLOAD_LOG is .* from 0"):
        payload_sample_rate(value)


def kserve_headers(kind: str, event_id: str) -> dict[str, str]:
    """The headers KServe's logger (pkg/logger/worker.go) sends in binary mode."""
    return {
        "Ce-Specversion": "1.0",
        "Ce-Id": event_id,
        "Ce-Type": kind,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Time": "2026-03-01T10:00:00.123Z",
        "Ce-Inferenceservicename": "churn",
        "Ce-Namespace": "models",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "default",
        "Ce-Metadata": "{}",
        "Content-Type": "application/json",
    }


def test_kserve_logger_posts_become_the_same_stored_events(tmp_path):
    store = LocalStore(tmp_path)
    request, response = inference(rows=2)
    received = [
        *events_from_http(kserve_headers(REQUEST_TYPE, "abc"), json.dumps(request).encode(), version=2),
        *events_from_http(kserve_headers(RESPONSE_TYPE, "abc"), json.dumps(response).encode()),
    ]
    assert received[0]["namespace"] == "models" and received[0]["source"] == "http://localhost:9081/"
    assert received[1]["modelversion"] == "2"  # from the V2 response's model_version
    receiver = PayloadLogger(store)  # a receiver batches what it is sent, as serve does
    assert receiver.log_events(received[:1]) and receiver.log_events(received[1:])
    receiver.close()
    assert receiver.stats.logged == 2 and len(store.list("monitoring/churn/2")) == 1
    log = read_inference_log(store, "churn", 2, feature_columns=COLUMNS)
    assert log.rows == 2 and set(log.keys["request_id"]) == {"abc"}
    assert log.keys["time"].iloc[0] == datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)

    structured = inference_events("churn", 2, request, response, request_id="s1")[0]
    assert (
        events_from_http({"content-type": "application/cloudevents+json"}, json.dumps(structured).encode())[
            0
        ]["id"]
        == "s1"
    )


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Ce-Type": REQUEST_TYPE, "Ce-Source": "x", "Ce-Specversion": "1.0"}, b"{}", "lacks id"),
        ({**kserve_headers("org.example.other", "a")}, b"{}", "are not inference payloads"),
        ({**kserve_headers(REQUEST_TYPE, "a")}, b"{}", "names no model version"),
        ({"content-type": "application/cloudevents+json"}, b"{oops", "not a structured CloudEvent"),
    ],
)
def test_receiver_input_that_is_not_an_inference_payload_is_refused(headers, body, message):
    with pytest.raises(InvalidInput, match=message):
        events_from_http(headers, body)


def test_since_takes_durations_and_iso_times():
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-02-28", now) == datetime(2026, 2, 28, tzinfo=UTC)
    assert parse_since("2026-02-28T08:00:00+01:00", now) == datetime(2026, 2, 28, 7, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="neither a duration"):
        parse_since("last week", now)
