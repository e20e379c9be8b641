"""The issueops MCP server: the library's functions as typed tools, for any MCP client.

One server object, `server`. Each tool is a few lines over the same function the CLI calls; what
they share (settings, object store, registry, loaded models) lives in the lifespan context. An
expected failure (IssueOpsError) reaches the client as a ToolError carrying its sentences; logs go
to stderr, and on stdio the SDK keeps fd 1 for the protocol alone.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from issueops.algorithms import ALGORITHMS, METRICS, TASK_METRICS, Algorithm, Metric
from issueops.cli.registry import actor
from issueops.config import Settings
from issueops.errors import IssueOpsError, NotFound
from issueops.logs import mask
from issueops.packaging import PackageResult
from issueops.prediction import Prediction, Predictor
from issueops.prepare import DatasetDescription
from issueops.registry import AuditRecord, ModelInfo, ModelSummary, Registry, RollbackResult, VersionInfo
from issueops.results import RunResult, StepTiming
from issueops.spec import TrainingSpec
from issueops.store import ObjectStore

T = TypeVar("T")

SpecBody = Annotated[
    str,
    Field(description="The issue body: bare YAML, JSON, or markdown with a ```yaml block (at most 64 KiB)."),
]
ModelName = Annotated[str, Field(description="Registered model name, e.g. breast-cancer-random-forest.")]
VersionNumber = Annotated[int, Field(ge=1, description="Version number of the registered model.")]
Reason = Annotated[str | None, Field(description="Why; kept in the model's audit trail.")]


@dataclass
class IssueOps:
    """What every tool shares for the server's life."""

    settings: Settings
    store: ObjectStore
    registry: Registry
    predictor: Predictor
    training: threading.Lock = field(default_factory=threading.Lock)  # the local runner runs one at a time


@dataclass
class Catalog:
    """What can be trained, and how each task is scored."""

    algorithms: list[Algorithm]
    task_metrics: dict[str, list[str]]
    metrics: list[Metric]


@contextlib.asynccontextmanager
async def lifespan(_: MCPServer) -> AsyncIterator[IssueOps]:
    from issueops.store import open_store

    settings = Settings.from_env()
    store = open_store(settings)
    registry = await anyio.to_thread.run_sync(Registry.from_settings, settings)  # imports MLflow
    with tempfile.TemporaryDirectory(prefix="issueops-mcp-") as cache:
        yield IssueOps(settings, store, registry, Predictor(store, registry, Path(cache)))


server = MCPServer(
    "issueops",
    instructions=(
        "Issue-driven MLOps on this machine: validate a training spec (the YAML of a GitHub issue), train it "
        "on the local Kubeflow Pipelines runner, then inspect, approve, roll back, package and query the "
        "registered models. Start with list_algorithms or validate_spec."
    ),
    lifespan=lifespan,
    log_level=os.environ.get("ISSUEOPS_LOG_LEVEL", "WARNING").upper(),
)


def tool(function: Callable[..., Any]) -> Callable[..., Any]:
    """Register `function` as a tool; its docstring, dedented, is the tool's description."""
    server.add_tool(function, description=inspect.cleandoc(function.__doc__ or ""))
    return function


def _shared(ctx: Context) -> IssueOps:
    return ctx.request_context.lifespan_context


async def _offload(call: Callable[[], T]) -> T:
    """Blocking library work in a worker thread; an explained failure becomes a ToolError."""
    try:
        return await anyio.to_thread.run_sync(call)
    except IssueOpsError as exc:
        raise ToolError("\n".join(mask(str(problem)) for problem in exc.problems)) from None


@tool
async def validate_spec(body: SpecBody, ctx: Context, check_data: bool = True) -> TrainingSpec:
    """Check a training spec and return it with every default filled in. With check_data (the default)
    its dataset or RL environment is also loaded and checked. Every problem comes back as a sentence."""
    from issueops.execution import preflight
    from issueops.spec import parse_issue_body

    shared = _shared(ctx)

    def validate() -> TrainingSpec:
        def check_inputs(spec: TrainingSpec) -> None:
            preflight(spec, shared.settings, shared.store)

        return parse_issue_body(body, check_inputs=check_inputs if check_data else None)

    return await _offload(validate)


@tool
def list_algorithms() -> Catalog:
    """Every algorithm with its learning type, task types, hyperparameters (type, default, allowed range)
    and default metric, and the metrics each task type can be judged on."""
    return Catalog(
        list(ALGORITHMS.values()),
        {task: list(names) for task, names in TASK_METRICS.items()},
        list(METRICS.values()),
    )


@tool
async def describe_dataset(
    dataset_id: Annotated[
        str, Field(description="sklearn:<name>, an id under datasets/ in the object store, or a path/URI.")
    ],
    ctx: Context,
) -> DatasetDescription:
    """Rows, columns with their kinds (numeric, categorical), and the target column a supervised spec
    would use by default."""
    from issueops.prepare import describe_dataset as describe

    shared = _shared(ctx)
    return await _offload(lambda: describe(dataset_id, shared.settings, shared.store))


@tool
async def train(
    body: SpecBody,
    ctx: Context,
    issue: Annotated[int | None, Field(ge=1, description="GitHub issue to report on, if configured.")] = None,
) -> RunResult:
    """Run the training pipeline for a spec on the local runner (prepare, train, evaluate, judge, and on
    a pass register, package and deploy) and return the run: run_id, decision (pass, retrain, fail),
    metrics, model version. Takes seconds to minutes; each step is reported as progress."""
    from issueops.execution import run_with_status
    from issueops.runs import new_run_id
    from issueops.spec import parse_issue_body

    shared = _shared(ctx)
    spec = await _offload(lambda: parse_issue_body(body))
    if not shared.training.acquire(blocking=False):
        raise ToolError("A training run is already going in this server; ask again when it has finished.")
    try:
        run_id = new_run_id()
        token = anyio.lowlevel.current_token()
        reports = itertools.count(1)
        await ctx.report_progress(0, None, f"{run_id}: started")

        def progress(step: StepTiming) -> None:
            took = f" ({step.seconds:.1f} s)" if step.seconds is not None else ""
            with contextlib.suppress(Exception):  # a client gone deaf must not stop the run
                anyio.from_thread.run(
                    ctx.report_progress,
                    next(reports),
                    None,
                    f"{run_id}: {step.name} {step.status}{took}",
                    token=token,
                )

        return await _offload(
            lambda: run_with_status(
                spec, settings=shared.settings, issue=issue, run_id=run_id, progress=progress
            )
        )
    finally:
        shared.training.release()


@tool
async def get_run(
    run_id: Annotated[str, Field(description="A run id, e.g. train-20260101-120000-ab12.")], ctx: Context
) -> RunResult:
    """The state or result of a run, from its record: each step's status, decision, metrics, model
    version, endpoint and history. Works while the run is still going."""
    from issueops.runs import RunRecord, collect_result

    store = _shared(ctx).store

    def read() -> RunResult:
        if RunRecord(store, run_id).read("request.json") is None:
            raise NotFound(f"There is no run {run_id}.")
        return collect_result(store, run_id)

    return await _offload(read)


@tool
async def list_models(ctx: Context) -> list[ModelSummary]:
    """Registered models with their production version, latest version and number of versions."""
    return await _offload(_shared(ctx).registry.list_models)


@tool
async def show_model(model: ModelName, ctx: Context) -> ModelInfo:
    """Every version of a model, newest first: approval status, aliases (production), run, issue, metrics."""
    return await _offload(lambda: _shared(ctx).registry.show(model))


@tool
async def model_history(model: ModelName, ctx: Context) -> list[AuditRecord]:
    """The audit trail of a model, oldest first: register, approve, promote, archive, reject, rollback,
    with time, actor, reason and run."""
    return await _offload(lambda: _shared(ctx).registry.history(model))


def _version_change(action: str, description: str) -> Callable[..., Any]:
    """A registry change to one version as a tool named `<action>_version` (as the CLI's `registry <action>`)."""

    async def change(
        model: ModelName, version: VersionNumber, ctx: Context, reason: Reason = None
    ) -> VersionInfo:
        registry = _shared(ctx).registry
        return await _offload(lambda: getattr(registry, action)(model, version, actor(), reason))

    change.__name__ = change.__qualname__ = f"{action}_version"
    change.__doc__ = description
    return tool(change)


approve_version = _version_change(
    "approve",
    "Approve a pending version: it goes to production and the previous production version is archived.",
)
archive_version = _version_change("archive", "Archive a version that is not in production.")
reject_version = _version_change(
    "reject", "Reject a version that is not in production: it can never be approved or rolled back to."
)


@tool
async def rollback_production(
    model: ModelName,
    ctx: Context,
    to_version: Annotated[
        int | None, Field(ge=1, description="An earlier production version; default: the one before.")
    ] = None,
    reason: Reason = None,
) -> RollbackResult:
    """Point production back at the previous production version (or at to_version); the version it
    leaves is archived. The local endpoint follows without a restart."""
    registry = _shared(ctx).registry
    return await _offload(
        lambda: registry.rollback_production(model, to_version, reason=reason, actor=actor())
    )


@tool
async def package_version(
    model: ModelName,
    ctx: Context,
    version: Annotated[int | None, Field(ge=1, description="Default: the production version.")] = None,
) -> PackageResult:
    """Export a registered version to ONNX with its preprocessing, check parity on its test split, and
    write its Triton model repositories (local, and cpu/gpu in the object store)."""
    from issueops.packaging import package_model

    shared = _shared(ctx)
    return await _offload(
        lambda: package_model(
            model, version, settings=shared.settings, store=shared.store, registry=shared.registry
        )
    )


@tool
async def predict(
    model: ModelName,
    rows: Annotated[
        list[dict[str, Any]],
        Field(
            min_length=1,
            max_length=256,
            description="Table rows as {column: value}, with the feature columns the model was trained on.",
        ),
    ],
    ctx: Context,
    version: Annotated[int | None, Field(ge=1, description="Default: the production version.")] = None,
) -> Prediction:
    """Predict with a packaged version (default: production) in this process with ONNX Runtime, from the
    same Triton repository `issueops serve` serves: a label and class probabilities per row for
    classification, a prediction for regression, a cluster or embedding otherwise."""
    return await _offload(lambda: _shared(ctx).predictor.predict(model, rows, version))
