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
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from issueops.bridge.answers import ANSWERS, RequestView
from issueops.config import Settings, actor
from issueops.data.prepare import DatasetDescription
from issueops.errors import IssueOpsError, NotFound
from issueops.evaluation.supervised import VersionComparison
from issueops.logs import mask
from issueops.monitoring.drift import MIN_ROWS, DriftReport
from issueops.monitoring.performance import MIN_LABELLED_ROWS, PerformanceReport
from issueops.monitoring.reports import DRIFT_WINDOW, PERFORMANCE_WINDOW
from issueops.monitoring.scrape import EndpointMetrics
from issueops.monitoring.triggers import CheckReport
from issueops.packaging.package import PackageResult
from issueops.registry.lifecycle import Registry
from issueops.registry.names import AuditRecord, ModelInfo, ModelSummary, RollbackResult, VersionInfo
from issueops.registry.promotion import Production, Promotion
from issueops.results import RunResult, StepTiming
from issueops.serving.prediction import Prediction, Predictor
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import ALGORITHMS, METRICS, TASK_METRICS, Algorithm, Metric
from issueops.store import ObjectStore

T = TypeVar("T")

SpecBody = Annotated[
    str,
    Field(description="The issue body: bare YAML, JSON, or markdown with a ```yaml block (at most 64 KiB)."),
]
ModelName = Annotated[str, Field(description="Registered model name, e.g. breast-cancer-random-forest.")]
VersionNumber = Annotated[int, Field(ge=1, description="Version number of the registered model.")]
Reason = Annotated[str | None, Field(description="Why; kept in the model's audit trail.")]
ServedVersion = Annotated[
    int | None, Field(ge=1, description="A version with logged traffic; default: the production version.")
]
Duration = Annotated[
    str | None, Field(description="A duration such as 30m, 24h, 7d or 2w; default: the CLI's.")
]


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
        "registered models; watch served models for drift and degradation, propose retraining, answer the "
        "bridge's training requests and compare versions. Start with list_algorithms or validate_spec."
    ),
    lifespan=lifespan,
    log_level=(Settings.from_env().log_level or "WARNING").upper(),
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
        raise ToolError(mask(exc.refusal())) from None  # its kind's refusal (issueops.errors.ANSWERS)


@tool
async def validate_spec(body: SpecBody, ctx: Context, check_data: bool = True) -> TrainingSpec:
    """Check a training spec and return it with every default filled in. With check_data (the default)
    its dataset or RL environment is also loaded and checked. Every problem comes back as a sentence."""
    from issueops.pipeline.execution import preflight
    from issueops.spec.body import parse_issue_body

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
    from issueops.data.prepare import describe_dataset as describe

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
    from issueops.pipeline.execution import run_with_status
    from issueops.pipeline.runs import new_run_id
    from issueops.spec.body import parse_issue_body

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
    from issueops.pipeline.runs import RunRecord, collect_result

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


def _production(ctx: Context) -> Production:
    shared = _shared(ctx)
    return Production(shared.settings, registry=shared.registry, store=shared.store)


@tool
async def approve_version(
    model: ModelName, version: VersionNumber, ctx: Context, reason: Reason = None
) -> Promotion:
    """Approve a pending version: it goes to production and the previous production version is archived.
    With ISSUEOPS_SERVING=kserve the InferenceService is promoted to it; `endpoint` says what it did."""
    production = _production(ctx)
    return await _offload(lambda: production.promote(model, version, actor=actor(), reason=reason))


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
    leaves is archived. The local endpoint follows without a restart; with ISSUEOPS_SERVING=kserve the
    InferenceService is reverted to it, and `endpoint` says what it did."""
    production = _production(ctx)
    return await _offload(lambda: production.roll_back(model, to_version, actor=actor(), reason=reason))


@tool
async def package_version(
    model: ModelName,
    ctx: Context,
    version: Annotated[int | None, Field(ge=1, description="Default: the production version.")] = None,
) -> PackageResult:
    """Export a registered version to ONNX with its preprocessing, check parity on its test split, and
    write its Triton model repositories (local, and cpu/gpu in the object store)."""
    from issueops.packaging.package import package_model

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


# ---------------------------------------------------------------------- monitoring


@tool
async def detect_drift(
    model: ModelName,
    ctx: Context,
    version: ServedVersion = None,
    since: Annotated[
        str, Field(description="Start of the window: a duration back from now (30m, 24h, 7d) or an ISO time.")
    ] = DRIFT_WINDOW,
    min_rows: Annotated[int, Field(ge=1, description="The smallest window tested.")] = MIN_ROWS,
    adjust_p_values: Annotated[
        bool,
        Field(description="Adjust p-values across features (Benjamini-Hochberg); false judges each alone."),
    ] = True,
) -> DriftReport:
    """Drift of a served version's logged traffic against the reference profile saved when it was
    registered, as `issueops monitor drift`: per feature (Kolmogorov-Smirnov, chi-square, Z-test, or
    Wasserstein / Jensen-Shannon on large references), the predictions, and the dataset verdict by drift
    share. A window smaller than min_rows is refused with the number needed."""
    from issueops.monitoring.drift import Correction
    from issueops.monitoring.reports import drift_report

    shared = _shared(ctx)
    correction = Correction.BENJAMINI_HOCHBERG if adjust_p_values else Correction.NONE
    return await _offload(
        lambda: drift_report(
            shared.registry,
            shared.store,
            model,
            version=version,
            since=since,
            min_rows=min_rows,
            correction=correction,
        )  # fmt: skip
    )


@tool
async def check_performance(
    model: ModelName,
    ctx: Context,
    version: ServedVersion = None,
    since: Annotated[
        str, Field(description="Start of the window: a duration back from now (7d, 30d) or an ISO time.")
    ] = PERFORMANCE_WINDOW,
    tolerance: Annotated[
        float,
        Field(
            ge=0, description="How much worse than registered still counts as fine, in the metric's units."
        ),
    ] = 0.0,
    min_labelled: Annotated[
        int, Field(ge=1, description="Labelled rows a measurement needs.")
    ] = MIN_LABELLED_ROWS,
) -> PerformanceReport:
    """A served version's evaluation metric on its labelled production traffic (labels sent with
    `issueops monitor feedback`) against the value it was registered with, as `issueops monitor
    performance`; for a classifier with too few labels, a confidence-based (CBPE) estimate, marked."""
    from issueops.monitoring.reports import performance_report

    shared = _shared(ctx)
    return await _offload(
        lambda: performance_report(
            shared.registry,
            shared.store,
            model,
            version=version,
            since=since,
            tolerance=tolerance,
            min_labelled=min_labelled,
        )  # fmt: skip
    )


@tool
async def get_endpoint_metrics(ctx: Context) -> EndpointMetrics:
    """The issueops series on the local `issueops serve` endpoint's /metrics (ISSUEOPS_SERVE_URL), parsed
    with prometheus_client's parser: inference requests by model, version and status, payload-log drops
    and queue depth, and whatever else that process exports."""
    from issueops.monitoring.scrape import endpoint_metrics

    url = _shared(ctx).settings.serve_url
    return await _offload(lambda: endpoint_metrics(url))


@tool
async def propose_retrain(
    model: ModelName,
    ctx: Context,
    act: Annotated[
        bool,
        Field(
            description="Open (or remind, or resolve) the proposal: a GitHub issue labelled "
            "mlops:retrain-proposal, or a file in the store without GitHub. False only reports."
        ),
    ] = True,
    drift_window: Duration = None,
    drift_windows: Annotated[
        int | None, Field(ge=1, description="Drifting windows in a row that fire.")
    ] = None,
    min_rows: Annotated[int | None, Field(ge=1, description="Rows a drift window needs.")] = None,
    performance_window: Duration = None,
    tolerance: Annotated[
        float | None, Field(ge=0, description="How much worse than registered may get.")
    ] = None,
    min_labelled: Annotated[int | None, Field(ge=1, description="Labelled rows a measurement needs.")] = None,
    cooldown: Duration = None,
) -> CheckReport:
    """Evaluate one production model's retraining triggers (drift persisting over consecutive windows,
    performance degraded beyond a tolerance, the spec's retrain_every), as `issueops monitor check
    --model MODEL --open-issues`: a firing trigger opens one proposal per model and trigger with the
    evidence and a ready-to-approve spec; nothing trains until a person approves it."""
    from dataclasses import replace

    from issueops.github import configured_client
    from issueops.monitoring.reports import parse_duration
    from issueops.monitoring.triggers import TriggerPolicy, check_triggers
    from issueops.reporting.history import history_branch

    shared = _shared(ctx)

    def check() -> CheckReport:
        given = {
            "drift_window": drift_window and parse_duration(drift_window),
            "drift_windows": drift_windows,
            "min_rows": min_rows,
            "performance_window": performance_window and parse_duration(performance_window),
            "tolerance": tolerance,
            "min_labelled": min_labelled,
            "cooldown": cooldown and parse_duration(cooldown),
        }
        policy = replace(TriggerPolicy(), **{k: v for k, v in given.items() if v is not None})
        github = configured_client(shared.settings) if act else None
        return check_triggers(
            shared.store, shared.registry, policy=policy, github=github, act=act, branch=history_branch(),
            models=[model],
        )  # fmt: skip

    return await _offload(check)


# ---------------------------------------------------------------------- the bridge's requests


@tool
async def list_requests(
    ctx: Context,
    phase: Annotated[
        str | None,
        Field(description="Only requests in this phase, e.g. WaitingForOperator; default: every request."),
    ] = None,
) -> list[RequestView]:
    """The bridge's training requests on this machine ($ISSUEOPS_HOME/requests), oldest first: phase,
    attempts and their results, the question waiting for an answer, and the hyperparameters an answer
    may adjust (allowed values and the current ones)."""
    from issueops.bridge.answers import list_requests as requests

    settings = _shared(ctx).settings
    return await _offload(lambda: requests(settings, phase))


@tool
async def answer_request(
    name: Annotated[str, Field(description="The request's name, as list_requests gives it.")],
    action: Annotated[
        Literal[ANSWERS],
        Field(
            description="retrain (with adjusted_hyperparameters, or without to train again as it is) while it "
            "waits for the operator; approve a version waiting for manual approval; cancel the request."
        ),
    ],
    ctx: Context,
    adjusted_hyperparameters: Annotated[
        dict[str, Any] | None,
        Field(description="For retrain: hyperparameter -> value, checked as on the issue."),
    ] = None,
    version: Annotated[
        int | None, Field(ge=1, description="For approve: default the request's version.")
    ] = None,
) -> RequestView:
    """Answer a training request as a comment on its issue would (adjusted_hyperparameters, /retrain,
    /approve, /cancel), with the same rules and the same replies on the issue. It is made in the name of
    ISSUEOPS_ACTOR (a GitHub login), who must be on ISSUEOPS_ALLOWLIST or have write access to the
    request's repository (asked of GitHub when GITHUB_TOKEN is set). The bridge starts the next attempt."""
    from issueops.bridge.answers import answer_request as answer

    settings = _shared(ctx).settings
    return await _offload(
        lambda: answer(
            settings, name, action, adjusted_hyperparameters=adjusted_hyperparameters, version=version
        )
    )


@tool
async def compare_versions(
    model: ModelName, a: VersionNumber, b: VersionNumber, ctx: Context
) -> VersionComparison:
    """Two versions of a model side by side: the metrics each was registered with (each on its own test
    split), and both scored the way the judge scores production against a new attempt: on the newer
    version's test split (or, for RL, its evaluation episodes), with its evaluation metric. A version that
    cannot be scored there says why."""
    from issueops.evaluation.supervised import compare_versions as compare

    shared = _shared(ctx)
    return await _offload(lambda: compare(shared.registry, shared.store, model, a, b))
