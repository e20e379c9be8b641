"""`issueops serve` logging its real traffic to a real S3 server (SeaweedFS), counted on /metrics.

A random forest is trained, registered and packaged with the pipeline's own steps into an S3
store; `issueops serve` runs in its own process and answers tritonclient over HTTP (the fast path
and kserve's own route) and gRPC. What it logged is read back with `read_inference_log` and checked
for drift by `issueops monitor drift`, and /metrics is read with prometheus_client's own parser.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.test_serving import RF_BODY, SERVE, free_port, grpc_infer, post, train_and_register

RF = "bc-rf"


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_endpoint):
    """A production forest in an S3 store, with the reference profile the package step saved."""
    home = tmp_path_factory.mktemp("monitoring-serve-home")
    bucket = f"served-{uuid.uuid4().hex[:8]}"
    env = {
        "ISSUEOPS_HOME": str(home),
        "ISSUEOPS_DATA_ROOTS": str(REPO),
        "ISSUEOPS_S3_ENDPOINT": s3_endpoint,
        "ISSUEOPS_S3_BUCKET": bucket,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in ("MLFLOW_TRACKING_URI", "ISSUEOPS_MANUAL_APPROVAL", "ISSUEOPS_PAYLOAD_LOG"):
            patch.delenv(name, raising=False)
        from issueops.config import Settings
        from issueops.pipeline.steps import deploy_step, package_step, promote_step
        from issueops.store import open_store

        store = open_store(Settings.from_env())
        store.client.create_bucket(Bucket=bucket)
        run = train_and_register(RF_BODY.format(n=10, extra=""))
        assert "uri" in package_step(run["run_id"])["reference_profile"]  # saved with the version
        promote_step(run["run_id"])
        deploy_step(run["run_id"])
        test = pd.read_parquet(io.BytesIO(store.get_bytes(f"processed/{run['run_id']}/test.parquet")))
        features = [c for c in test.columns if c != "target"]
        yield {
            "home": home,
            "env": {**os.environ, **env},
            "store": store,
            "version": run["version"],
            "rows": test[features].to_numpy(np.float64),
        }


def start_server(world, *args: str, env: dict | None = None) -> dict:
    http, grpc = free_port(), free_port()
    log = open(world["home"] / f"serve-{http}.log", "w")  # noqa: SIM115 - kept open for the process
    process = subprocess.Popen(
        [*SERVE, "serve", "--model", RF, "--port", str(http), "--grpc-port", str(grpc), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**world["env"], "ISSUEOPS_SERVE_POLL_S": "0.5", **(env or {})},
        cwd=REPO,
    )
    line = process.stdout.readline()
    assert line.startswith("serving"), (line, (world["home"] / f"serve-{http}.log").read_text())
    return {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "process": process, "log": log}


def stop_server(server) -> int:
    """SIGTERM, as a pod is stopped; the exit status."""
    server["process"].send_signal(signal.SIGTERM)
    code = server["process"].wait(timeout=60)
    server["log"].close()
    return code


def metrics(server) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed by prometheus_client: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{server['http']}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def inference_count(samples, model: str, version: str, code: str) -> float:
    labels = (("code", code), ("model", model), ("version", version))
    return samples.get(("issueops_inference_requests_total", labels), 0.0)


def post_json(server, model: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{server['http']}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_traffic_is_logged_to_s3_counted_and_checked_for_drift(world):
    """Every route logs what it answered under the response's id; /metrics counts every request
    by model, version and status; the logs are written by SIGTERM, read back whole, and
    `issueops monitor drift` judges them against the version's reference profile."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from issueops.monitoring.inference_log import read_inference_log

    rows, version = world["rows"], world["version"]
    chunks = np.array_split(rows, 6)
    server = start_server(world)
    try:
        sent: dict[str, np.ndarray] = {}
        for i, chunk in enumerate(chunks[:3]):  # tritonclient HTTP, binary tensors: the fast path
            client = httpclient.InferenceServerClient(server["http"])
            tensor = httpclient.InferInput("input", list(chunk.shape), "FP64")
            tensor.set_data_from_numpy(chunk)
            answer = client.infer(RF, [tensor], request_id=f"http-{i}")
            assert answer.get_response()["id"] == f"http-{i}"
            sent[f"http-{i}"] = chunk
        for i, chunk in enumerate(chunks[3:5]):  # gRPC
            client = grpcclient.InferenceServerClient(server["grpc"])
            tensor = grpcclient.InferInput("input", list(chunk.shape), "FP64")
            tensor.set_data_from_numpy(chunk)
            assert client.infer(RF, [tensor], request_id=f"grpc-{i}").get_response().id == f"grpc-{i}"
            sent[f"grpc-{i}"] = chunk
        # kserve's own route (JSON data under the binary extension's header), without an id: the
        # answer carries a new one
        chunk = chunks[5]
        header = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(chunk.shape),
                    "datatype": "FP64",
                    "data": chunk.ravel().tolist(),
                }
            ]
        }
        status, body = post(
            server,
            f"/v2/models/{RF}/infer",
            json.dumps(header).encode(),
            {"Inference-Header-Content-Length": str(len(json.dumps(header).encode()))},
        )
        answer = json.loads(body)
        assert status == 200 and answer["id"], answer
        sent[answer["id"]] = chunk
        # refused requests are counted, never logged
        status, _ = post_json(
            server,
            RF,
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]},
        )
        assert status == 400
        assert post_json(server, "no-such-model", {"inputs": []})[0] == 404
        with pytest.raises(Exception, match="no-such-model"):
            grpc_infer(server["grpc"], "no-such-model", rows[:1], "FP64")

        samples = metrics(server)
        assert inference_count(samples, RF, version, "200") == len(sent)
        assert inference_count(samples, RF, version, "400") == 1
        assert inference_count(samples, "", "", "404") == 2  # HTTP and gRPC; the name is no label
        assert samples[("issueops_payload_log_dropped_total", ())] == 0
        assert ("issueops_payload_log_queue_depth", ()) in samples
        # kserve's own histograms are on the same endpoint
        assert any(name.startswith("request_predict_seconds") for name, _ in samples)
    finally:
        assert stop_server(server) == 0

    log = read_inference_log(world["store"], RF, int(version))
    assert set(log.keys["request_id"]) == set(sent)
    assert log.rows == sum(len(chunk) for chunk in sent.values()) == len(rows)
    assert set(log.keys["version"]) == {int(version)}
    for request_id, chunk in sent.items():
        logged = log.features[(log.keys["request_id"] == request_id).to_numpy()]
        np.testing.assert_array_equal(logged.to_numpy(np.float64), chunk)
    assert set(log.outputs) >= {"label"} and len(log.outputs["label"]) == len(rows)

    done = subprocess.run(
        [sys.executable, "-m", "issueops", "monitor", "drift", RF, "--json", "--min-rows", "100"],
        capture_output=True,
        text=True,
        env=world["env"],
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == RF and str(report["version"]) == version
    assert report["rows"] == len(rows) and len(report["features"]) == rows.shape[1]
    assert report["drift"] is False  # the test split comes from the training distribution


def test_workers_log_a_sample_and_every_scrape_counts_all_of_them(world):
    """`--workers 2` with ISSUEOPS_PAYLOAD_LOG=0.5: whichever process answers /metrics, it counts
    the requests of both; exactly the ids the sample rate picks are logged, by both processes."""
    from issueops.monitoring.inference_log import NeverServed, read_inference_log

    try:
        before = set(read_inference_log(world["store"], RF).keys["request_id"])
    except NeverServed:
        before = set()
    server = start_server(world, "--workers", "2", env={"ISSUEOPS_PAYLOAD_LOG": "0.5"})
    ids = [f"sampled-{i}" for i in range(40)]
    try:
        for i, request_id in enumerate(ids):  # a connection each: the kernel spreads them over both
            row = world["rows"][i : i + 1]
            status, answer = post_json(
                server,
                RF,
                {
                    "id": request_id,
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, row.shape[1]],
                            "datatype": "FP64",
                            "data": row.ravel().tolist(),
                        }
                    ],
                },
            )
            assert status == 200 and answer["id"] == request_id
        scrapes = [metrics(server) for _ in range(6)]
        version = world["version"]
        assert {inference_count(s, RF, version, "200") for s in scrapes} == {len(ids)}
    finally:
        assert stop_server(server) == 0
    logged = set(read_inference_log(world["store"], RF).keys["request_id"]) - before
    picked = {i for i in ids if zlib.crc32(i.encode()) / 2**32 < 0.5}
    assert 0 < len(picked) < len(ids)
    assert logged == picked


@pytest.mark.parametrize("value", ["often", "1.5", "-0.1"])
def test_a_bad_payload_log_rate_is_refused_before_listening(world, value):
    done = subprocess.run(
        [*SERVE, "serve", "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True,
        text=True,
        env={**world["env"], "ISSUEOPS_PAYLOAD_LOG": value},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "ISSUEOPS_PAYLOAD_LOG is" in done.stderr and "from 0 (off) to 1 (all)" in done.stderr


def series_in(text: str) -> set[str]:
    """The metric families a /metrics body defines (with or without samples yet)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def readme_series(anywhere: bool = False) -> set[str]:
    """The series the README's "Metrics and alerts" table lists (or names anywhere in that section)."""
    section = (REPO / "README.md").read_text().split("### Metrics and alerts", 1)[1].split("\n## ", 1)[0]
    pattern = r"`(issueops_[a-z_]+)`" if anywhere else r"^\| `(issueops_[a-z_]+)` \|"
    return set(re.findall(pattern, section, re.MULTILINE))


def test_the_bridge_exports_every_series_of_the_readme(tmp_path):
    """`bridge serve`'s /metrics is scrapable and defines every series of the README's table (the
    operator and the bridge set theirs through issueops.monitoring.metrics)."""
    import httpx

    from issueops.bridge.inbox import Inbox
    from issueops.bridge.webhook import HttpServer, make_app
    from issueops.monitoring import metrics as series

    series.count_request_phase("Queued")
    with HttpServer(make_app(Inbox(tmp_path / "bridge.db"), "secret")) as server:
        answer = httpx.get(f"{server.url}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    exported = {n for n in series_in(answer.text) if n.startswith("issueops_")}
    assert exported - readme_series() == {"issueops_payload_log_queue_depth"} <= readme_series(anywhere=True)
    assert readme_series() <= exported
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for f in text_string_to_metric_families(answer.text)
        for s in f.samples
    }
    assert samples[("issueops_requests_total", (("phase", "Queued"),))] >= 1


def test_the_receiver_counts_what_it_drops_while_the_store_stalls(tmp_path):
    """`issueops monitor serve` behind a stalled store: a full queue answers 503, and /metrics
    counts the drops and shows the queue."""
    import threading

    import httpx

    from issueops.bridge.webhook import HttpServer
    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.monitoring.receiver import make_receiver_app
    from issueops.store import LocalStore

    class StalledStore(LocalStore):
        released = threading.Event()

        def put_bytes(self, key, data):
            self.released.wait(30)
            return super().put_bytes(key, data)

    store = StalledStore(tmp_path / "store")
    logger = PayloadLogger(store, max_queue=2, batch_size=1, flush_interval_s=0.01)
    headers = {
        "ce-specversion": "1.0",
        "ce-source": "test",
        "ce-type": "org.kubeflow.serving.inference.request",
        "ce-inferenceservicename": "churn",
        "content-type": "application/json",
    }
    body = json.dumps({"model_name": "churn", "model_version": "1", "inputs": []})

    def dropped(text: str) -> float:
        return next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "issueops_payload_log_dropped_total"
        )

    try:
        with HttpServer(make_receiver_app(logger)) as server:
            before = dropped(httpx.get(f"{server.url}/metrics").text)
            codes = [
                httpx.post(
                    f"{server.url}/events", content=body, headers={**headers, "ce-id": f"r{i}"}
                ).status_code
                for i in range(8)
            ]
            text = httpx.get(f"{server.url}/metrics").text
    finally:
        StalledStore.released.set()
        logger.close()
    assert codes[:2] == [202, 202] and codes.count(503) >= 5
    assert dropped(text) - before == codes.count(503)
    depth = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "issueops_payload_log_queue_depth"
    ]
    assert depth == [2.0]


def test_logged_tensors_read_back_as_the_server_held_them(tmp_path):
    """What `issueops serve` hands the logger (arrays, converted on its thread) reads back value for
    value: float32 as float32, NaN as missing, text as text."""
    from issueops.monitoring.inference_log import read_inference_log
    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.store import LocalStore

    store = LocalStore(tmp_path / "store")
    numbers = np.array([[0.1, np.nan, 3.25], [1e-7, -2.5, 7.0]], dtype=np.float32)
    text = np.array([["basic"], ["pro"]], dtype=object)
    label, proba = np.array([1, 0], dtype=np.int64), np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)
    logger = PayloadLogger(store)
    assert logger.log_tensors(
        "churn",
        3,
        {"input": numbers, "categorical": text},
        {"label": label, "probabilities": proba},
        request_id="r-1",
    )
    logger.close()
    log = read_inference_log(
        store, "churn", 3, feature_columns={"input": ["a", "b", "c"], "categorical": ["plan"]}
    )
    assert list(log.keys["request_id"]) == ["r-1", "r-1"] and list(log.keys["row"]) == [0, 1]
    np.testing.assert_array_equal(log.features[["a", "b", "c"]].to_numpy(np.float32), numbers)
    assert list(log.features["plan"]) == ["basic", "pro"]
    np.testing.assert_array_equal(log.outputs["label"], label)
    np.testing.assert_array_equal(log.outputs["probabilities"], proba)


def test_the_logger_holds_a_bounded_number_of_tensor_bytes(tmp_path):
    """Behind a stalled store, tensors beyond the byte bound are dropped and counted, not held."""
    import threading

    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.store import LocalStore

    released = threading.Event()

    class StalledStore(LocalStore):
        def put_bytes(self, key, data):
            released.wait(30)
            return super().put_bytes(key, data)

    rows = np.zeros((1000, 10))  # 80,000 bytes
    logger = PayloadLogger(StalledStore(tmp_path / "store"), max_queue_bytes=250_000, batch_size=1)
    try:
        accepted = [logger.log_tensors("m", 1, {"input": rows}, {}, request_id=f"r{i}") for i in range(10)]
    finally:
        released.set()
        logger.close()
    assert accepted == [True] * 3 + [False] * 7  # 240,000 bytes held, the one being written included
    assert logger.stats.dropped == 7 and logger.stats.logged == 3
