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
        "import sys, issueops.mcp_server, issueops.prediction, issueops.serving.model\n"
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
