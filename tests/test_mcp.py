"""The MCP server for real: the server object through mcp's in-process client, and `issueops mcp`
started over stdio by mcp's stdio client. Training runs the real local pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import EXAMPLES, REPO
from tests.github_double import GitHubDouble
from tests.test_kserve import assert_moved, canaried, served, serving_on_kserve

pytestmark = pytest.mark.anyio

TOOLS = {
    "validate_spec",
    "list_algorithms",
    "describe_dataset",
    "train",
    "get_run",
    "list_models",
    "show_model",
    "model_history",
    "approve_version",
    "archive_version",
    "reject_version",
    "rollback_production",
    "package_version",
    "predict",
    "detect_drift",
    "check_performance",
    "get_endpoint_metrics",
    "propose_retrain",
    "list_requests",
    "answer_request",
    "compare_versions",
}
MODEL = "bc-mcp"


def forest(n_estimators: int) -> str:
    return (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:breast_cancer\n"
        f"model_name: {MODEL}\nevaluation_threshold: 0.85\n"
        f"hyperparameters: {{n_estimators: {n_estimators}, max_depth: 6}}\n"
    )


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def server(home):
    from issueops.mcp_server import server

    return server


async def call(client: Client, tool: str, **arguments) -> dict:
    """The tool's structured result; fails the test with the tool's own words if it refused."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def refusal(client: Client, tool: str, **arguments) -> str:
    """The sentence(s) a tool refused with: an error result, never a traceback."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = result.content[0].text
    assert "Traceback" not in text and 'File "' not in text
    prefix = f"Error executing tool {tool}: "  # the SDK's; what follows is ours
    assert text.startswith(prefix), text
    return text.removeprefix(prefix)


async def test_tools_are_listed_with_descriptions_and_typed_schemas(server):
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and not tool.description.startswith(" "), tool.name
        assert "\n    " not in tool.description, tool.name
        assert "ctx" not in tool.input_schema.get("properties", {}), tool.name
        assert tool.output_schema, tool.name
    predict = tools["predict"].input_schema
    assert predict["required"] == ["model", "rows"]
    assert predict["properties"]["rows"]["maxItems"] == 256
    assert tools["approve_version"].input_schema["properties"]["version"]["minimum"] == 1
    assert "decision" in tools["train"].output_schema["properties"]


async def test_validate_returns_the_resolved_spec(server):
    body = (EXAMPLES / "random_forest_classification.yaml").read_text()
    async with Client(server) as client:
        spec = await call(client, "validate_spec", body=body)
        catalog = await call(client, "list_algorithms")
        dataset = await call(client, "describe_dataset", dataset_id="sklearn:iris")
    assert spec["algorithm"] == "random_forest" and spec["evaluation_metric"] == "accuracy"
    assert spec["dataset_id"] == "sklearn:breast_cancer"
    forest = next(a for a in catalog["algorithms"] if a["name"] == "random_forest")
    assert "n_estimators" in {p["name"] for p in forest["params"]}
    assert "accuracy" in catalog["task_metrics"]["classification"]
    assert dataset["rows"] == 150 and dataset["target"] == "target"
    assert dataset["columns"]["sepal length (cm)"] == "numeric"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("learning_type: supervised\nalgorithm: [unclosed\n", "not valid YAML or JSON (line 3)"),
        ("a: &x [1, 2]\nb: *x\nlearning_type: supervised\n", "anchors (&name) are not allowed"),
        ("learning_type: supervised\n# " + "x" * 70_000 + "\n", "the limit is 64 KiB"),
        (
            "learning_type: supervised\nalgorithm: random_forest\ndataset_id: ../../../etc/passwd\n",
            "outside the allowed data roots",
        ),
    ],
    ids=["malformed", "alias-bomb", "oversized", "path-escape"],
)
async def test_bad_specs_are_refused_with_a_sentence(server, body, expected):
    async with Client(server) as client:
        assert expected in await refusal(client, "validate_spec", body=body)


async def test_every_problem_of_a_spec_comes_back_one_per_line(server):
    body = (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
        "hyperparameters: {n_estimators: -5, max_depth: lots}\nmax_retry: 99\n"
    )
    async with Client(server) as client:
        problems = (await refusal(client, "validate_spec", body=body)).splitlines()
    assert [p.split()[:2] for p in problems] == [
        ["hyperparameter", "'n_estimators'"],
        ["hyperparameter", "'max_depth'"],
        ["max_retry", "must"],
    ]


async def test_unknown_model_and_run_are_named(server):
    async with Client(server) as client:
        assert await refusal(client, "show_model", model="no-such-model") == (
            "There is no registered model named 'no-such-model'."
        )
        assert "no-such-model has no production version" in await refusal(
            client, "predict", model="no-such-model", rows=[{"x": 1}]
        )
        assert await refusal(client, "rollback_production", model="no-such-model") == (
            "There is no registered model named 'no-such-model'."
        )
        assert await refusal(client, "get_run", run_id="train-20990101-000000-0000") == (
            "There is no run train-20990101-000000-0000."
        )
        assert "not a valid object store key" in await refusal(client, "get_run", run_id="../../etc")
        assert "Input should be greater than or equal to 1" in await refusal(
            client, "archive_version", model="m", version=0
        )


async def test_train_package_predict_rollback_archive_through_the_tools(server):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    rows = json.loads(data.data.head(40).to_json(orient="records"))
    truth = [str(t) for t in data.target.head(40)]
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(server) as client:
        first = await client.call_tool("train", {"body": forest(10)}, progress_callback=on_progress)
        assert not first.is_error, first.content[0].text
        first = first.structured_content
        assert first["decision"] == "pass" and first["metrics"]["accuracy"] >= 0.85
        assert (first["model_name"], first["model_version"], first["alias"]) == (MODEL, "1", "production")
        assert progress[0] == f"{first['run_id']}: started"
        assert f"{first['run_id']}: judge done" in " ".join(progress)

        run = await call(client, "get_run", run_id=first["run_id"])
        assert (
            run["decision"] == "pass" and {s["name"]: s["status"] for s in run["steps"]}["deploy"] == "done"
        )

        packaged = await call(client, "package_version", model=MODEL)
        assert packaged["version"] == 1 and packaged["export"]["parity"]["labels_identical"] is True

        answer = await call(client, "predict", model=MODEL, rows=rows)
        assert answer["version"] == 1
        labels = [p["label"] for p in answer["predictions"]]
        assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 36
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in answer["predictions"])
        missing = await refusal(client, "predict", model=MODEL, rows=[{"mean radius": 14.0}])
        assert "The rows lack the column(s) mean texture" in missing

        second = await call(client, "train", body=forest(20))
        assert second["model_version"] == "2" and second["alias"] == "production"
        models = await call(client, "list_models")
        summaries = [{k: v for k, v in m.items() if k != "description"} for m in models["result"]]
        assert summaries == [{"name": MODEL, "production": 2, "latest_version": 2, "versions": 2}]
        assert (await call(client, "predict", model=MODEL, rows=rows[:1]))["version"] == 2

        assert "is in production" in await refusal(client, "archive_version", model=MODEL, version=2)
        rolled = await call(client, "rollback_production", model=MODEL, reason="drift")
        assert (rolled["from_version"], rolled["to_version"]) == (2, 1)
        assert (await call(client, "predict", model=MODEL, rows=rows[:1]))["version"] == 1
        assert "no earlier production version" in await refusal(client, "rollback_production", model=MODEL)

        archived = await call(client, "archive_version", model=MODEL, version=2, reason="superseded")
        assert archived["status"] == "Archived" and archived["aliases"] == []
        assert "is in production" in await refusal(client, "reject_version", model=MODEL, version=1)
        shown = await call(client, "show_model", model=MODEL)
        assert shown["production"] == 1
        assert [(v["version"], v["status"]) for v in shown["versions"]] == [(2, "Archived"), (1, "Approved")]
        trail = (await call(client, "model_history", model=MODEL))["result"]
        rollback = next(r for r in trail if r["action"] == "rollback")
        assert (rollback["from_version"], rollback["to_version"], rollback["reason"]) == (2, 1, "drift")

        # Both versions scored on version 2's test split, as the judge scores production.
        compared = await call(client, "compare_versions", model=MODEL, a=2, b=1)
        assert [v["version"] for v in compared["versions"]] == [1, 2] and compared["data_of"] == 2
        for version, scored in zip(compared["versions"], compared["scores"], strict=True):
            # the same seeded split: each scores what it was registered with
            assert scored["value"] == version["metrics"]["accuracy"] == first["metrics"]["accuracy"]
            assert scored["scored_on"] == "the same 114-row test split"
        assert compared["better"] is None and compared["summary"].endswith("they score the same.")
        assert "Name two different versions" in await refusal(
            client, "compare_versions", model=MODEL, a=1, b=1
        )
        assert (
            await refusal(client, "compare_versions", model=MODEL, a=1, b=7)
            == f"Model {MODEL} has no version 7."
        )


async def test_stdio_server_keeps_stdout_for_the_protocol(home, tmp_path):
    """`python -m issueops mcp` started by mcp's stdio client: a training run, with the KFP runner's
    chatter, MLflow's logs and progress notifications, and not one stdout line that is not protocol."""
    stray: list[Exception] = []
    progress: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, Exception):  # what the client could not parse as JSON-RPC
            stray.append(message)

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "issueops", "mcp"],
        env={"ISSUEOPS_HOME": str(home), "ISSUEOPS_LOG_LEVEL": "INFO"},
        cwd=REPO,
    )
    body = (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
        "hyperparameters: {n_estimators: 5}\n"
    )
    with open(tmp_path / "stderr.log", "w") as errlog:
        async with Client(stdio_client(parameters, errlog=errlog), message_handler=on_message) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert (await call(client, "validate_spec", body=body))["task_type"] == "classification"
            run = await client.call_tool("train", {"body": body}, progress_callback=on_progress)
            assert not run.is_error, run.content[0].text
            assert (await call(client, "list_models"))["result"][0]["production"] == 1
    assert names == TOOLS
    assert run.structured_content["decision"] == "pass"
    assert f"{run.structured_content['run_id']}: notify done" in " ".join(progress)
    assert stray == []
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


def test_server_and_predictions_leave_kserve_unloaded():
    """kserve's gRPC messages and tritonclient.grpc's share names: a process holding both fails to
    import the second. The MCP server (and its predictions) must stay usable beside a client."""
    script = (
        "import sys, issueops.mcp_server, issueops.serving.prediction, issueops.serving.model\n"
        "import tritonclient.grpc\n"
        "print(sorted(m for m in sys.modules if m == 'kserve' or m.startswith('kserve.')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "example.com"])
def test_http_transport_refuses_to_listen_beyond_loopback(host):
    done = subprocess.run(
        [sys.executable, "-m", "issueops", "mcp", "--transport", "streamable-http", "--host", host],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"listens on loopback only (127.0.0.1, ::1, localhost), not {host}" in done.stderr


# ---------------------------------------------------------------------- monitoring


def start_serving(home) -> tuple[subprocess.Popen, str]:
    """`issueops serve` in its own process, logging its traffic to the home's store."""
    from tests.test_serving import SERVE, free_port

    http = free_port()
    log = open(home / "serve.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [*SERVE, "serve", "--port", str(http), "--grpc-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=REPO,
    )
    line = process.stdout.readline()
    assert line.startswith("serving"), (line, (home / "serve.log").read_text())
    return process, f"http://127.0.0.1:{http}"


def infer(url: str, request_id: str, rows) -> list[int]:
    """One V2 inference of a batch of rows; the predicted class indices."""
    import urllib.request

    body = {"id": request_id, "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP64",
                                          "data": rows.ravel().tolist()}]}  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v2/models/{MODEL}/infer", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        outputs = {o["name"]: o["data"] for o in json.loads(answer.read())["outputs"]}
    return [int(label) for label in outputs["label"]]


def save_profile(home, run_id: str) -> list[str]:
    """The version's reference profile, from its prepared data, as the register step saves it."""
    import pandas as pd

    from issueops.config import Settings
    from issueops.monitoring.profile import build_reference_profile, save_reference_profile
    from issueops.store import open_store

    store = open_store(Settings.from_env())
    processed = home / "store" / "processed" / run_id
    metadata = json.loads((processed / "metadata.json").read_text())
    train = pd.read_parquet(processed / "train.parquet")
    profile = build_reference_profile(
        train,
        feature_columns={"input": metadata["feature_columns"]},
        task_type="classification",
        classes=metadata["classes"],
        evaluation_metric="accuracy",
    )
    save_reference_profile(store, profile, MODEL, 1)
    return metadata["feature_columns"]


async def test_drift_performance_metrics_and_a_proposal_from_served_traffic(
    server, home, tmp_path, monkeypatch
):
    """A version trained through the tools is served by `issueops serve`; its traffic (every feature
    scaled up) is counted on /metrics, drifts, and is labelled wrong, so its accuracy has collapsed:
    one retraining proposal is written to the store (no GitHub here), and only one."""
    import numpy as np
    import pandas as pd

    from tests.test_pipeline import cli

    async with Client(server) as client:
        trained = await call(client, "train", body=forest(10))
        assert await refusal(client, "detect_drift", model=MODEL) == (
            f"Version 1 of {MODEL} has never been served: no inference logs under monitoring/{MODEL}/1/."
        )
    columns = save_profile(home, trained["run_id"])
    rows = pd.read_parquet(home / "store" / "processed" / trained["run_id"] / "test.parquet")[columns]
    shifted = rows.to_numpy(dtype="float64") * 3
    process, url = start_serving(home)
    monkeypatch.setenv("ISSUEOPS_SERVE_URL", url)
    try:
        predicted = {
            f"req-{i}": infer(url, f"req-{i}", chunk) for i, chunk in enumerate(np.array_split(shifted, 6))
        }
        async with Client(server) as client:
            metrics = await call(client, "get_endpoint_metrics")
    finally:
        process.terminate()  # SIGTERM: what is queued is written first
        assert process.wait(timeout=60) == 0
    assert metrics["url"] == f"{url}/metrics"
    series = {s["name"]: s for s in metrics["series"]}
    assert all(name.startswith("issueops_") for name in series)
    served = {
        (x["name"], tuple(sorted(x["labels"].items()))): x["value"]
        for x in series["issueops_inference_requests"]["samples"]
    }
    assert (
        served[("issueops_inference_requests_total", (("code", "200"), ("model", MODEL), ("version", "1")))]
        == 6
    )
    assert series["issueops_payload_log_dropped"]["samples"][0]["value"] == 0

    # Every label the opposite of what the model said.
    lines = [
        json.dumps({"request_id": request_id, "row": row, "label": str(1 - label)})
        for request_id, labels in predicted.items()
        for row, label in enumerate(labels)
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines))
    stored = cli("monitor", "feedback", MODEL, str(tmp_path / "labels.jsonl"), home=home)
    assert stored.returncode == 0, stored.stderr

    async with Client(server) as client:
        drift = await call(client, "detect_drift", model=MODEL, since="1h")
        assert (drift["version"], drift["rows"], drift["drift"]) == (1, len(rows), True)
        assert drift["drift_share"] >= 0.5 and len(drift["features"]) == len(columns)
        assert "needs at least 1000" in await refusal(client, "detect_drift", model=MODEL, min_rows=1000)

        performance = await call(client, "check_performance", model=MODEL, since="1h")
        assert performance["estimated"] is False and performance["labelled_rows"] == len(rows)
        assert performance["value"] == 0 and performance["degraded"] is True
        assert performance["registered"] == trained["metrics"]["accuracy"]

        proposed = await call(client, "propose_retrain", model=MODEL, cooldown="1s")
        (checked,) = proposed["models"]
        triggers = {t["kind"]: t for t in checked["triggers"]}
        assert triggers["performance"]["firing"] and triggers["performance"]["action"] == "stored"
        assert not triggers["drift"]["firing"]  # one window so far; drift must persist over three
        (body,) = checked["proposals"]
        assert f"## Retraining proposal: `{MODEL}` (performance)" in body and f"model_name: {MODEL}" in body
        again = await call(client, "propose_retrain", model=MODEL, cooldown="1s")
        assert again["models"][0]["proposals"] == []  # still firing: not a second proposal
        assert "is not a duration" in await refusal(client, "propose_retrain", model=MODEL, cooldown="soon")
        assert "no production version" in await refusal(client, "propose_retrain", model="no-such-model")
    proposals = list((home / "store" / "monitoring" / MODEL / "proposals").glob("*.md"))
    assert [p.name.endswith("-performance.md") for p in proposals] == [True]


# ---------------------------------------------------------------------- the bridge's requests

GITHUB_TOKEN = "ghp_" + "McpT0kenValue" * 3
WAITING_SPEC = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\nmodel_name: iris-mcp\n"
    "evaluation_threshold: 0.99\nmax_retry: 2\nhyperparameters: {n_estimators: 5}\n"
)


def waiting_request(home, repository: str, issue: int):
    """A request whose first attempt missed the threshold, as the bridge leaves it."""
    from issueops.lifecycle.request_store import RequestStore
    from issueops.lifecycle.state_machine import Phase, iso, new_request, utcnow
    from issueops.spec.body import parse_issue_body

    store = RequestStore(home)
    request = new_request(
        parse_issue_body(WAITING_SPEC), name=store.next_name(repository, issue), repository=repository,
        issue=issue, requested_by="alice",
    )  # fmt: skip
    request.phase, request.attempt, request.run_id = Phase.WAITING, 1, "train-20260101-000000-abcd"
    request.wait_deadline = iso(utcnow().replace(year=utcnow().year + 1))
    return store.save(request)


async def test_requests_are_answered_with_the_issue_commands_rules_and_rights(server, home, monkeypatch):
    with GitHubDouble(token=GITHUB_TOKEN) as github:
        github.add_user("alice", role="maintain")
        github.add_user("rita", role="read")
        for name, value in {"GITHUB_TOKEN": GITHUB_TOKEN, "GITHUB_REPOSITORY": github.full_name,
                            "GITHUB_API_URL": github.url}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ISSUEOPS_ALLOWLIST", raising=False)
        monkeypatch.delenv("ISSUEOPS_ACTOR", raising=False)
        issue = github.create_issue("Train", body=WAITING_SPEC, labels=["mlops:train"], user="alice")
        name = waiting_request(home, github.full_name, issue).name

        async with Client(server) as client:  # no ISSUEOPS_ACTOR: nobody to answer as
            (listed,) = (await call(client, "list_requests", phase="WaitingForOperator"))["result"]
            assert (listed["name"], listed["attempts_left"], listed["algorithm"]) == (
                name,
                2,
                "random_forest",
            )
            assert {
                "name": "n_estimators",
                "allowed": listed["adjustable"][0]["allowed"],
                "current": 5,
            } in listed["adjustable"]
            assert (await call(client, "list_requests", phase="Succeeded"))["result"] == []
            assert "'Done' is not a phase" in await refusal(client, "list_requests", phase="Done")
            assert "Set ISSUEOPS_ACTOR to your GitHub login" in await refusal(
                client, "answer_request", name=name, action="cancel"
            )

        monkeypatch.setenv("ISSUEOPS_ACTOR", "rita")  # read access only
        async with Client(server) as client:
            refused = await refusal(client, "answer_request", name=name, action="cancel")
        assert refused == (
            f"rita may not answer {name}: only people on ISSUEOPS_ALLOWLIST, or with write, maintain or admin "
            f"access to {github.full_name}, can steer a run. Nothing was changed."
        )

        monkeypatch.setenv("ISSUEOPS_ACTOR", "alice")
        async with Client(server) as client:
            wrong = await refusal(
                client,
                "answer_request",
                name=name,
                action="retrain",
                adjusted_hyperparameters={"n_estimators": 0},
            )
            assert "n_estimators" in wrong and "Traceback" not in wrong
            assert "nothing to approve yet" in await refusal(
                client, "answer_request", name=name, action="approve"
            )
            assert "There is no request named nobody-1." == await refusal(
                client, "answer_request", name="nobody-1", action="cancel"
            )
            answered = await call(
                client,
                "answer_request",
                name=name,
                action="retrain",
                adjusted_hyperparameters={"n_estimators": 40},
            )
            assert answered["phase"] == "Pending" and answered["adjusted_hyperparameters"] == {
                "n_estimators": 40
            }
            assert answered["message"] == "Operator input from alice accepted; attempt 2 is queued."
            cancelled = await call(client, "answer_request", name=name, action="cancel")
            assert cancelled["phase"] == "Cancelled" and cancelled["message"] == "Cancelled by alice."
            assert "already Cancelled" in await refusal(client, "answer_request", name=name, action="cancel")
        assert any("Request cancelled" in c.body for c in github.comments_on(issue))

        # Without GitHub, the allowlist alone says who may answer.
        for variable in ("GITHUB_TOKEN", "GITHUB_REPOSITORY"):
            monkeypatch.delenv(variable)
        other = waiting_request(home, github.full_name, issue + 1).name
        async with Client(server) as client:
            assert "or with GitHub configured (GITHUB_TOKEN) to check their access" in await refusal(
                client, "answer_request", name=other, action="retrain"
            )
        monkeypatch.setenv("ISSUEOPS_ALLOWLIST", "bob, Alice")
        async with Client(server) as client:
            retrained = await call(client, "answer_request", name=other, action="retrain")
        assert retrained["phase"] == "Pending" and "Retrain from alice" in retrained["message"]


def test_readme_mcp_table_lists_every_tool():
    import re

    section = (REPO / "README.md").read_text().split("## MCP server", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert named == TOOLS


# ---------------------------------------------------------------------- production moves the endpoint


@pytest.fixture
def cluster(home, monkeypatch, tmp_path):
    with serving_on_kserve(monkeypatch, tmp_path) as server:
        yield server


async def test_approve_and_rollback_tools_move_the_inference_service(
    server, cluster, store, tmp_path, monkeypatch
):
    registry = canaried(store, tmp_path, "bc-tools", cluster)
    monkeypatch.setenv("ISSUEOPS_ACTOR", "carol")
    async with Client(server) as client:
        approved = await call(client, "approve_version", model="bc-tools", version=2)
        assert approved["version"]["aliases"] == ["production"]
        assert (
            approved["endpoint"]
            == "InferenceService ml/bc-tools serves version 2 with all traffic (was version 1)"
        )
        assert served(cluster, "bc-tools") == (2, None)
        rolled = await call(client, "rollback_production", model="bc-tools", reason="drift")
        assert rolled["to_version"] == 1 and "serves version 1" in rolled["endpoint"]
        assert served(cluster, "bc-tools") == (1, None)
    assert_moved(registry, "bc-tools", cluster, [("promote", 1, 2), ("rollback", 2, 1)])


async def test_an_approve_answer_moves_the_inference_service(
    server, cluster, store, home, tmp_path, monkeypatch
):
    """answer_request goes through the bridge's controller, as /approve on the issue does."""
    from issueops.lifecycle.request_store import RequestStore
    from issueops.lifecycle.state_machine import Phase

    registry = canaried(store, tmp_path, "bc-answer", cluster)
    request = waiting_request(home, "acme/models", 7)
    request.phase, request.model_name, request.model_version = Phase.SUCCEEDED, "bc-answer", "2"
    RequestStore(home).save(request)
    monkeypatch.setenv("ISSUEOPS_ACTOR", "carol")
    monkeypatch.setenv("ISSUEOPS_ALLOWLIST", "carol")
    async with Client(server) as client:
        answered = await call(client, "answer_request", name=request.name, action="approve")
    assert answered["reply"] and "serves version 2 with all traffic" in answered["reply"]
    assert served(cluster, "bc-answer") == (2, None)
    assert_moved(registry, "bc-answer", cluster, [("promote", 1, 2)])
