"""The local V2 endpoint, for real: trained and registered models (MLflow on SQLite), packaged to
the object store, served by `issueops serve` in its own process and queried with tritonclient
over HTTP and gRPC. Production moves (rollback, approve) while it serves."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

SERVE = [sys.executable, "-m", "issueops.cli.serving"]
RF = "bc-rf"
MLP = "wine-mlp"
BODY_TIMEOUT_S = (
    3  # the test server's bound on a request body's arrival (a small one, for the stalled-body test)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_register(body: str) -> dict:
    """The pipeline's own steps, without KFP: prepare, train, evaluate, judge, register."""
    from issueops.config import Settings
    from issueops.pipeline.execution import start_request
    from issueops.pipeline.runs import new_run_id
    from issueops.pipeline.steps import (
        evaluate_step,
        judge_step,
        prepare_data_step,
        register_step,
        train_step,
    )
    from issueops.spec.body import parse_issue_body
    from issueops.store import open_store

    spec = parse_issue_body(body)
    settings = Settings.from_env()
    run_id = start_request(open_store(settings), spec, run_id=new_run_id())
    work = settings.home / "work" / run_id
    spec_json = spec.to_json()
    prepare_data_step(spec_json, run_id, str(work / "p"))
    train_step(spec_json, run_id, str(work / "p"), str(work / "m"))
    evaluate_step(spec_json, run_id, str(work / "p"), str(work / "m"), str(work / "e"))
    assert judge_step(spec_json, run_id, str(work / "e"), 1).decision == "pass"
    registration = register_step(run_id)
    return {"run_id": run_id, **registration}


RF_BODY = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:breast_cancer\n"
    "model_name: bc-rf\nevaluation_threshold: 0.8\nhyperparameters: {{n_estimators: {n}, max_depth: 6}}\n{extra}"
)
MLP_BODY = (
    "learning_type: supervised\nalgorithm: neural_network\ndataset_id: sklearn:wine\nmodel_name: wine-mlp\n"
    "evaluation_threshold: 0.7\nhyperparameters: {epochs: 30}\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two production models (the forest at version 2 of 2), packaged, and a registry handle."""
    home = tmp_path_factory.mktemp("serving-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ISSUEOPS_HOME", str(home))
        patch.setenv("ISSUEOPS_DATA_ROOTS", str(REPO))
        for name in (
            "ISSUEOPS_S3_ENDPOINT",
            "ISSUEOPS_S3_BUCKET",
            "MLFLOW_TRACKING_URI",
            "ISSUEOPS_MANUAL_APPROVAL",
        ):
            patch.delenv(name, raising=False)
        from issueops.pipeline.steps import deploy_step, package_step, promote_step
        from issueops.registry.lifecycle import Registry

        runs = {
            "rf1": train_and_register(RF_BODY.format(n=10, extra="")),
            "rf2": train_and_register(RF_BODY.format(n=30, extra="")),
            "mlp1": train_and_register(MLP_BODY),
        }
        for key in runs:  # the pipeline's order: production moves at promote, once packaged
            package_step(runs[key]["run_id"])
            promote_step(runs[key]["run_id"])
            deploy_step(runs[key]["run_id"])
        yield {"home": home, "runs": runs, "registry": Registry.from_settings()}


@pytest.fixture(scope="module")
def server(world):
    http, grpc = free_port(), free_port()
    env = {
        **os.environ,
        "ISSUEOPS_HOME": str(world["home"]),
        "ISSUEOPS_SERVE_POLL_S": "0.3",
        "ISSUEOPS_SERVE_RETRY_S": "0.5",
        "ISSUEOPS_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    log = open(world["home"] / "serve.log", "w")  # noqa: SIM115 - kept open for the process
    process = subprocess.Popen(
        [*SERVE, "serve", "--port", str(http), "--grpc-port", str(grpc)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=REPO,
    )
    line = process.stdout.readline()
    assert line.startswith("serving"), (line, (world["home"] / "serve.log").read_text())
    yield {
        "http": f"127.0.0.1:{http}",
        "grpc": f"127.0.0.1:{grpc}",
        "process": process,
        "log": world["home"] / "serve.log",
        "ports": (http, grpc),
    }
    process.terminate()
    process.wait(timeout=20)
    log.close()


def features_of(world, run_key: str) -> pd.DataFrame:
    home, run_id = world["home"], world["runs"][run_key]["run_id"]
    table = pd.read_parquet(home / "store" / "processed" / run_id / "test.parquet")
    return table.drop(columns="target")


def http_infer(url: str, model: str, array: np.ndarray, datatype: str, name: str = "input"):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def grpc_infer(url: str, model: str, array: np.ndarray, datatype: str, name: str = "input"):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


def served_version(server, model: str, array, datatype) -> str:
    return http_infer(server["http"], model, array, datatype).get_response()["model_version"]


def wait_for_version(server, model, array, datatype, version: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = served_version(server, model, array, datatype)
        if seen == version:
            return seen
        time.sleep(0.2)
    return seen


def test_random_forest_answers_over_http_and_grpc_like_the_model(world, server):
    from issueops.training.train import load_model

    features = features_of(world, "rf2")
    model = load_model(world["home"] / "store" / "models" / world["runs"]["rf2"]["run_id"])
    rows = features.to_numpy(np.float64)
    for infer in (http_infer, grpc_infer):
        result = infer(server["http"] if infer is http_infer else server["grpc"], RF, rows, "FP64")
        assert np.array_equal(result.as_numpy("label"), model.predict(features))
        assert np.abs(result.as_numpy("probabilities") - model.predict_proba(features)).max() < 1e-4
    grpc_response = grpc_infer(server["grpc"], RF, rows[:3], "FP64").get_response()
    assert grpc_response.model_version == "2"
    assert http_infer(server["http"], RF, rows[:3], "FP64").get_response()["model_version"] == "2"


def test_mlp_answers_over_http_and_grpc_like_the_model(world, server):
    from issueops.training.train import load_model

    features = features_of(world, "mlp1")
    model = load_model(world["home"] / "store" / "models" / world["runs"]["mlp1"]["run_id"])
    rows = features.to_numpy(np.float32)
    http = http_infer(server["http"], MLP, rows, "FP32")
    grpc = grpc_infer(server["grpc"], MLP, rows, "FP32")
    for result in (http, grpc):
        assert np.array_equal(result.as_numpy("label"), model.predict(features))
        assert np.abs(result.as_numpy("probabilities") - model.predict_proba(features)).max() < 1e-4
    assert grpc.get_response().model_version == "1"


def test_health_and_metadata_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(server["http"])
    grpc = grpcclient.InferenceServerClient(server["grpc"])
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MLP)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(RF)
    metadata = http.get_model_metadata(MLP)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 13]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    grpc_metadata = grpc.get_model_metadata(RF)
    assert [(i.name, i.datatype, list(i.shape)) for i in grpc_metadata.inputs] == [
        ("input", "FP64", [-1, 30])
    ]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(world, server):
    from concurrent.futures import ThreadPoolExecutor

    rows = features_of(world, "rf2").to_numpy(np.float64)
    single = [
        http_infer(server["http"], RF, rows[i : i + 1], "FP64").as_numpy("probabilities") for i in range(16)
    ]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(
                lambda i: http_infer(server["http"], RF, rows[i : i + 1], "FP64").as_numpy("probabilities"),
                range(16),
            )
        )
    assert all(np.array_equal(a, b) for a, b in zip(single, together, strict=True))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_are_refused_with_a_reason(world, server, protocol):
    from tritonclient.utils import InferenceServerException

    infer = http_infer if protocol == "http" else grpc_infer
    url = server[protocol]
    bad_request = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    cases = [
        (dict(array=rows.astype(np.float32), datatype="FP32"), "must be FP64, not FP32"),
        (dict(array=rows[:, :5], datatype="FP64"), "must have shape [-1, 30]"),
        (dict(array=rows, datatype="FP64", name="features"), "has no input named 'features'"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(InferenceServerException) as refused:
            infer(url, RF, **kwargs)
        assert bad_request in str(refused.value.status()) and reason in refused.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        infer(url, "no-such-model", rows, "FP64")
    assert str(unknown.value.status()) in ("404", "StatusCode.NOT_FOUND")


def post(server, path: str, body, headers: dict | None = None, **request) -> tuple[int, bytes]:
    """One raw HTTP POST to the endpoint: (status, body)."""
    import http.client

    host, port = server["http"].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {}, **request)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post_v2(server, model: str, header: dict | bytes, tensor: bytes = b"", json_length: int | None = None):
    """A raw V2 request with the binary tensor extension, as tritonclient frames it."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(head) if json_length is None else json_length
    return post(
        server,
        f"/v2/models/{model}/infer",
        head + tensor,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)},
    )


def test_hand_framed_binary_and_json_requests(world, server):
    """Binary tensors, JSON tensors and requested outputs all answer like tritonclient's requests;
    a body shorter or longer than its header says, or a header that is not JSON, is a 400."""
    rows = features_of(world, "rf2").to_numpy(np.float64)[:3]
    expected = http_infer(server["http"], RF, rows, "FP64").as_numpy("label")
    tensor = {"name": "input", "shape": [3, 30], "datatype": "FP64"}
    binary = {"inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}]}

    status, body = post_v2(server, RF, {**binary, "outputs": [{"name": "label"}]}, rows.tobytes())
    assert status == 200
    answer = json.loads(body)
    assert [o["name"] for o in answer["outputs"]] == ["label"] and answer["outputs"][0]["data"] == list(
        expected
    )

    status, body = post_v2(server, RF, {"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
    assert status == 200 and [o for o in json.loads(body)["outputs"] if o["name"] == "label"][0][
        "data"
    ] == list(expected)

    for tensor_bytes in (rows.tobytes()[:-8], rows.tobytes() + b"extra"):
        status, body = post_v2(server, RF, binary, tensor_bytes)
        assert status == 400 and b"its header announces 720" in body and b"Traceback" not in body
    status, body = post_v2(server, RF, b"{not json", rows.tobytes())
    assert status == 400 and b"Unrecognized request format" in body
    status, body = post_v2(server, RF, binary, rows.tobytes(), json_length=len(json.dumps(binary)) + 5000)
    assert status == 400 and b"Traceback" not in body


def test_binary_requests_answer_as_kserves_own_route(world, server):
    """Binary-tensor requests skip FastAPI (InferRoute); their answers match those of the same
    tensors sent as JSON through kserve's route, JSON and binary outputs alike."""
    import tritonclient.http as httpclient

    rows = features_of(world, "rf2").to_numpy(np.float64)[:4]
    tensor = {"name": "input", "shape": [4, 30], "datatype": "FP64"}
    status, body = post_v2(
        server,
        RF,
        {"id": "same", "inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}]},
        rows.tobytes(),
    )
    status_json, body_json = post_v2(
        server, RF, {"id": "same", "inputs": [{**tensor, "data": rows.ravel().tolist()}]}
    )
    assert status == status_json == 200 and json.loads(body) == json.loads(body_json)

    client = httpclient.InferenceServerClient(server["http"])
    request = httpclient.InferInput("input", list(rows.shape), "FP64")
    request.set_data_from_numpy(rows)
    binary = client.infer(
        RF, [request], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    )
    expected = http_infer(server["http"], RF, rows, "FP64").as_numpy("probabilities")
    assert np.array_equal(binary.as_numpy("probabilities"), expected) and binary.as_numpy("label") is None


def post_json(server, model: str, body: bytes, content_type: str | None = None):
    """A V2 request that is all JSON, without Inference-Header-Content-Length (as tritonclient
    sends JSON tensors: no content type either)."""
    return post(
        server, f"/v2/models/{model}/infer", body, {"Content-Type": content_type} if content_type else {}
    )


def test_all_json_requests_answer_whatever_their_content_type(world, server):
    """JSON tensors without the binary header answer like binary ones (tritonclient's
    binary_data=False, curl with or without application/json); a body that is not a V2 request
    is a 400 that names the first problem."""
    import tritonclient.http as httpclient

    rows = features_of(world, "rf2").to_numpy(np.float64)[:3]
    expected = http_infer(server["http"], RF, rows, "FP64")
    client = httpclient.InferenceServerClient(server["http"])
    tensor = httpclient.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=False)
    answer = client.infer(RF, [tensor])
    assert np.array_equal(answer.as_numpy("label"), expected.as_numpy("label"))
    assert np.abs(answer.as_numpy("probabilities") - expected.as_numpy("probabilities")).max() < 1e-12

    request = json.dumps(
        {"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP64", "data": rows.ravel().tolist()}]}
    )
    for content_type in (None, "application/json", "text/plain"):
        status, body = post_json(server, RF, request.encode(), content_type)
        assert status == 200, body
        labels = [o for o in json.loads(body)["outputs"] if o["name"] == "label"][0]["data"]
        assert labels == expected.as_numpy("label").tolist()

    refusals = [
        (b"{not json", "not a V2 inference request: Invalid JSON"),
        (b"{}", "not a V2 inference request: inputs: Field required"),
        (b'{"inputs": "rows"}', "not a V2 inference request: inputs: "),
        (b'{"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP64", "data": [1.0]}]}', "input"),
        ("[" * 100_000 + "]" * 100_000).encode(),
    ]
    for case in refusals:
        body, reason = case if isinstance(case, tuple) else (case, "not a V2 inference request")
        status, answer = post_json(server, RF, body)
        assert status == 400 and reason in json.loads(answer)["error"], answer
        assert b"Traceback" not in answer
    status, answer = post_json(server, "no-such-model", b"{not json")
    assert status == 404 and b"no-such-model" in answer
    assert http_infer(server["http"], RF, rows, "FP64").as_numpy("label").shape == (3,)


class KeepAlive:
    """One HTTP/1.1 connection to the endpoint, kept for every request: a request fails when the
    server dropped the connection, and an answer that closes it fails the assertion."""

    def __init__(self, server):
        import http.client

        host, port = server["http"].split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.connection.connect()
        self.socket = self.connection.sock

    def post(self, path: str, body, headers: dict | None = None, **request) -> tuple[int, bytes]:
        self.connection.request("POST", path, body=body, headers=headers or {}, **request)
        response = self.connection.getresponse()
        answer = response.read()
        assert self.connection.sock is self.socket, f"the server closed the connection after {answer!r}"
        return response.status, answer

    def infer(self, rows: np.ndarray) -> int:
        """A valid binary-tensor request on this connection: its status."""
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(rows.shape),
                        "datatype": "FP64",
                        "parameters": {"binary_data_size": rows.nbytes},
                    }
                ]
            }
        ).encode()
        return self.post(
            f"/v2/models/{RF}/infer",
            header + rows.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        )[0]

    def close(self) -> None:
        self.connection.close()


def test_malformed_framing_is_a_400_on_a_connection_that_stays_usable(world, server):
    """A bad Inference-Header-Content-Length (not a number, negative, longer than the body) or a
    JSON header that is not a V2 request gets 400 with a sentence, and the next valid request on
    the same keep-alive connection is answered."""
    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    tensor = {"name": "input", "shape": [2, 30], "datatype": "FP64"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
    body = header + rows.tobytes()
    lengths = ["abc", "1e3", "-5", "", "³", str(len(body) + 1), "9" * 5000]
    headers_that_are_not_v2 = [  # framed right, but no V2 request header inside
        b"[]",
        b'{"inputs": [{"name": "input"}]}',
        b'{"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64", "parameters": {"binary_data_size": "480"}}]}',
        b'{"inputs": [{"name": "input", "shape": [2, 30], "datatype": "UINT16", "parameters": {"binary_data_size": 7}}]}',
        b'{"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64", "parameters": {}}]}',
    ]
    connection = KeepAlive(server)
    try:
        for length in lengths:
            for chunked in (False, True):  # announced Content-Length, and a chunked body
                status, answer = connection.post(
                    f"/v2/models/{RF}/infer",
                    iter([body]) if chunked else body,
                    {"Inference-Header-Content-Length": length},
                    encode_chunked=chunked,
                )
                assert status == 400, (length, answer)
                assert "Inference-Header-Content-Length" in json.loads(answer)["error"], answer
                assert connection.infer(rows) == 200
        for bad_header in headers_that_are_not_v2:
            status, answer = connection.post(
                f"/v2/models/{RF}/infer",
                bad_header + rows.tobytes(),
                {"Inference-Header-Content-Length": str(len(bad_header))},
            )
            assert status == 400, (bad_header, answer)
            error = json.loads(answer)["error"]
            assert "Traceback" not in error and " : " not in error, error  # not kserve's 500 text
            assert connection.infer(rows) == 200
    finally:
        connection.close()
    assert "Exception in ASGI application" not in server["log"].read_text()


def test_a_500_leaves_the_keep_alive_connection_usable():
    """An error the app answers with 500 (kserve's handler for any exception) does not drop the
    connection under the next request: the answer was complete, so the connection stays."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from issueops.serving.endpoints import InferRoute

    async def broken(request):
        raise RuntimeError("a bug")

    async def fine(request):
        return PlainTextResponse("fine")

    async def answer_500(request, exc):  # as kserve's generic_exception_handler answers
        return JSONResponse({"error": f"{type(exc).__name__} : {exc}"}, 500)

    app = Starlette(
        routes=[Route("/broken", broken, methods=["POST"]), Route("/fine", fine, methods=["POST"])]
    )
    app.add_exception_handler(Exception, answer_500)
    port = free_port()
    config = uvicorn.Config(InferRoute(app, None, 1 << 20), host="127.0.0.1", port=port, log_level="critical")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not running.started and time.monotonic() < deadline:
            time.sleep(0.05)
        connection = KeepAlive({"http": f"127.0.0.1:{port}"})
        assert connection.post("/broken", b"{}") == (500, b'{"error":"RuntimeError : a bug"}')
        assert connection.post("/fine", b"{}") == (200, b"fine")
        connection.close()
    finally:
        running.should_exit = True
        thread.join(timeout=30)


def test_a_body_shorter_than_its_content_length_is_answered_within_the_bound(world, server):
    """A client that announces more body than it sends gets 408 with a sentence and the connection
    closed once ISSUEOPS_SERVE_BODY_TIMEOUT_S (3 s for this server) has passed, on the infer route
    and on kserve's other routes; the server keeps answering everyone else meanwhile."""
    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    host, port = server["http"].split(":")
    for path in (f"/v2/models/{RF}/infer", f"/v1/models/{RF}:predict"):
        with socket.create_connection((host, int(port)), timeout=120) as stalled:
            stalled.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"inputs"'
            )
            assert http_infer(server["http"], RF, rows, "FP64").as_numpy("label").shape == (2,)
            answer = b""
            while chunk := stalled.recv(65536):  # until the server closes the connection
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in head.lower()
        assert f"did not arrive within {BODY_TIMEOUT_S} s" in json.loads(body)["error"], body


@pytest.mark.parametrize("route", ["fast path", "kserve's route"])
def test_json_tensors_of_non_numbers_are_refused_with_a_sentence(world, server, route):
    """FP64 data with null, booleans, strings ("1.5", "NaN") or nesting that is not the tensor's
    shape gets 400 naming the value, whether the request is all JSON (the fast path) or JSON
    tensors with the binary extension's header (kserve's route); numbers nested as the shape are
    answered, and so is NaN where the JSON reader takes it (the fast path's; kserve's orjson
    refuses it as not JSON)."""
    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    flat = rows.ravel().tolist()

    def ask(data: list) -> tuple[int, dict]:
        request = {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64", "data": data}]}
        if route == "fast path":
            status, answer = post_json(server, RF, json.dumps(request).encode())
        else:
            status, answer = post_v2(server, RF, request)
        return status, json.loads(answer)

    for value, shown in [
        (None, "null"),
        (True, "true"),
        ("1.5", '"1.5"'),
        ("NaN", '"NaN"'),
        ([1.0], "[1.0]"),
    ]:
        status, answer = ask([*flat[:7], value, *flat[8:]])
        assert status == 400, answer
        assert f"holds {shown} at value 7" in answer["error"] and "JSON numbers" in answer["error"], answer
    for nested in ([[v] for v in flat], [flat[:30], [flat[30:]]], [[flat[:15], flat[15:30]], flat[30:]]):
        status, answer = ask(nested)
        assert status == 400 and "nested as its shape [2, 30]" in answer["error"], answer
    status, answer = ask([*flat[:-1]])
    assert status == 400 and "holds 59 values; its shape [2, 30] takes 60" in answer["error"], answer

    expected = http_infer(server["http"], RF, rows, "FP64").as_numpy("label").tolist()
    for data in (flat, [flat[:30], flat[30:]]):
        status, answer = ask(data)
        assert status == 200 and [o for o in answer["outputs"] if o["name"] == "label"][0]["data"] == expected
    if route == "fast path":  # NaN (not JSON, but Python's json writes it): a missing value
        status, answer = ask([*flat[:7], float("nan"), *flat[8:]])
        assert status == 200, answer


def test_explicit_values_of_every_datatype_are_checked():
    """The JSON (or gRPC typed) values of every datatype are what the datatype says: integers for
    INT*, true/false for BOOL, strings for BYTES, numbers for FP*; nothing is coerced."""
    from issueops.errors import InvalidInput
    from issueops.serving.model import explicit_array

    assert explicit_array("x", [1, 2.5], [2], "FP32").dtype == np.float32
    assert explicit_array("x", [[1, -2]], [1, 2], "INT64").tolist() == [[1, -2]]
    assert explicit_array("x", [True, False], [2], "BOOL").tolist() == [True, False]
    assert explicit_array("x", ["a", b"b"], [2], "BYTES").tolist() == ["a", b"b"]
    refused = [
        ([1.5, 2], "INT64", "holds 1.5 at value 0"),
        ([1, True], "INT32", "holds true at value 1"),
        ([300, 1], "UINT8", "out of range for UINT8"),
        ([2**70, 1], "INT64", "out of range for INT64"),
        ([1, 0], "BOOL", "holds 1 at value 0"),
        (["a", None], "BYTES", "holds null at value 1"),
        ([1, "2"], "FP64", 'holds "2" at value 1'),
        ([1, 10**400], "FP64", "out of range for FP64"),
    ]
    for values, datatype, reason in refused:
        with pytest.raises(InvalidInput, match=re.escape(reason)):
            explicit_array("x", values, [2], datatype)


def test_oversized_requests_are_refused_before_they_are_read(world, server):
    """Above --max-request-mb (default 8 MiB): HTTP 413 with a sentence, whether the length is
    announced or the body is chunked, and gRPC RESOURCE_EXHAUSTED; the server keeps answering."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    huge = b"0" * (9 << 20)
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64"}]}).encode()
    for path in (f"/v2/models/{RF}/infer", "/v2/models/no-such-model/versions/1/infer"):
        status, body = post(
            server, path, header + huge, {"Inference-Header-Content-Length": str(len(header))}
        )
        assert status == 413
        assert "takes at most 8 MiB (issueops serve --max-request-mb)" in json.loads(body)["error"]

    chunks = (huge[i : i + (1 << 20)] for i in range(0, len(huge), 1 << 20))
    status, body = post(server, f"/v2/models/{RF}/infer", chunks, encode_chunked=True)
    assert status == 413 and "is over 8 MiB; this endpoint takes at most 8 MiB" in json.loads(body)["error"]

    client = grpcclient.InferenceServerClient(server["grpc"])
    tensor = grpcclient.InferInput("input", [40000, 30], "FP64")
    tensor.set_data_from_numpy(np.zeros((40000, 30)))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(RF, [tensor])
    assert "RESOURCE_EXHAUSTED" in str(refused.value.status())
    assert http_infer(server["http"], RF, rows, "FP64").as_numpy("label").shape == (2,)


def test_port_in_use_is_a_clear_error(world, server):
    http, _ = server["ports"]
    done = subprocess.run(
        [*SERVE, "serve", "--port", str(http), "--grpc-port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"])},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"HTTP port {http} on 127.0.0.1 is already in use; choose another with --port." in done.stderr
    assert "Traceback" not in done.stderr


def test_rollback_and_approvals_move_the_served_version_without_restart(world, server):
    """Rollback to 1; a corrupt version 3 and an unpackaged version 4 are refused while 1 keeps
    serving; packaging 4 lets it in. The server process is the same throughout."""
    from issueops.pipeline.steps import package_step

    registry, store_root = world["registry"], world["home"] / "store"
    rows = features_of(world, "rf2").to_numpy(np.float64)[:4]
    pid = server["process"].pid
    assert served_version(server, RF, rows, "FP64") == "2"

    registry.rollback_production(RF, actor="test", reason="rollback on the issue")
    assert wait_for_version(server, RF, rows, "FP64", "1") == "1"

    # They need not beat version 1 in production (the judge's champion): they are here to be refused.
    manual = "manual_approval: true\nmax_regression: 1\n"
    third = train_and_register(RF_BODY.format(n=12, extra=manual))
    fourth = train_and_register(RF_BODY.format(n=14, extra=manual))
    assert (third["version"], fourth["version"]) == ("3", "4")
    package_step(third["run_id"])
    onnx_file = store_root / "triton" / RF / "3" / "cpu" / RF / "3" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # truncated in the store

    registry.approve(RF, 3, "test")
    time.sleep(2)
    assert served_version(server, RF, rows, "FP64") == "1"
    registry.approve(RF, 4, "test")  # never packaged
    time.sleep(2)
    assert served_version(server, RF, rows, "FP64") == "1"
    log = server["log"].read_text()
    assert "refused version 3 of bc-rf" in log and "is corrupt" in log
    assert "refused version 4 of bc-rf" in log and "is not packaged" in log

    package_step(fourth["run_id"])
    assert wait_for_version(server, RF, rows, "FP64", "4") == "4"
    assert server["process"].poll() is None and server["process"].pid == pid


def test_package_cli_writes_a_triton_repository(world, tmp_path):
    done = subprocess.run(
        [*SERVE, "package", MLP, "--repo", str(tmp_path / "repo"), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"])},
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == 1 and result["export"]["parity"]["labels_identical"] is True
    assert (tmp_path / "repo" / MLP / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / MLP / "1" / "model.onnx").is_file()
    missing = subprocess.run(
        [*SERVE, "package", "no-such-model"],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"])},
        cwd=REPO,
        timeout=300,
    )
    assert missing.returncode == 2 and "no-such-model has no production version" in missing.stderr


def test_deploy_step_records_the_local_endpoint(world):
    from issueops.config import Settings
    from issueops.pipeline.runs import RunRecord, collect_result
    from issueops.pipeline.steps import deploy_step
    from issueops.store import open_store

    run_id = world["runs"]["mlp1"]["run_id"]
    serving = deploy_step(run_id)
    assert serving["endpoint"] == "http://127.0.0.1:8000/v2/models/wine-mlp" and serving["version"] == 1
    store = open_store(Settings.from_env())
    assert RunRecord(store, run_id).read("serving.json")["endpoint"] == serving["endpoint"]
    assert collect_result(store, run_id).endpoint == serving["endpoint"]


def test_workers_share_the_port_follow_production_and_end_with_the_server(world):
    """`--workers 2`: two processes answer on one HTTP port, both move when production moves, and
    the worker ends when the first process is killed outright."""
    import psutil

    registry = world["registry"]
    rows = features_of(world, "rf2").to_numpy(np.float64)[:2]
    http, grpc = free_port(), free_port()
    process = subprocess.Popen(
        [*SERVE, "serve", "--model", RF, "--port", str(http), "--grpc-port", str(grpc), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"]), "ISSUEOPS_SERVE_POLL_S": "0.3"},
        cwd=REPO,
    )
    try:
        assert process.stdout.readline().startswith(f"serving {RF} v")
        [worker] = psutil.Process(process.pid).children()
        server = {"http": f"127.0.0.1:{http}"}
        before = int(registry.production(RF).version)
        target = 1 if before != 1 else 2  # both packaged intact (the earlier test corrupts version 3)
        registry.rollback_production(RF, target, actor="test", reason="workers follow")
        deadline = time.monotonic() + 20
        answers = []
        while time.monotonic() < deadline:  # every process, not just one, serves the new version
            answers = [served_version(server, RF, rows, "FP64") for _ in range(20)]
            if set(answers) == {str(target)}:
                break
            time.sleep(0.2)
        assert set(answers) == {str(target)}
        grpc_version = grpc_infer(f"127.0.0.1:{grpc}", RF, rows, "FP64").get_response().model_version
        assert grpc_version == str(target)
        process.kill()
        process.wait(timeout=10)
        assert worker.wait(timeout=10) is not None or not worker.is_running()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--workers", "0"),
        ("--workers", "65"),
        ("--workers", "two"),
        ("--max-request-mb", "0"),
        ("--max-request-mb", "4096"),
    ],
)
def test_bad_worker_counts_and_request_limits_are_refused(world, flag, value):
    done = subprocess.run(
        [*SERVE, "serve", flag, value, "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"])},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert flag in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_bad_body_timeout_is_refused_before_listening(world, value):
    done = subprocess.run(
        [*SERVE, "serve", "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"]), "ISSUEOPS_SERVE_BODY_TIMEOUT_S": value},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"ISSUEOPS_SERVE_BODY_TIMEOUT_S must be a number of seconds above 0, not '{value}'." in done.stderr


@pytest.mark.parametrize("model", ["no-such-model", "bad name; rm -rf /"])
def test_serving_a_model_without_production_is_refused(world, model):
    done = subprocess.run(
        [*SERVE, "serve", "--model", model, "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "ISSUEOPS_HOME": str(world["home"])},
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{model} has no production version to serve." in done.stderr
