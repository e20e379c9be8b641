"""package and deploy: a registered version becomes Triton model repositories, then an endpoint.

`package_model` exports the version to ONNX (parity-checked on its run's test split), writes the
local repository (`issueops package`), and uploads one repository per target to the object store
(`triton/<model>/<version>/{cpu,gpu}/`, then `package.json`). `package_step` and `deploy_step`
are what the pipeline's components call; both report in runs/<run_id>/.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from issueops.config import Settings
from issueops.errors import NotFound
from issueops.packaging import triton
from issueops.pipeline.runs import RunRecord, step_guard, utcnow
from issueops.store import ObjectStore, open_store

DEFAULT_GRPC_URL = "127.0.0.1:8001"


@dataclass
class PackageResult:
    model: str
    version: int
    run_id: str
    repository: str  # the local model repository written
    targets: dict[str, str]  # target -> URI of its repository in the object store
    export: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_version(registry, model: str, version: int | str | None):
    """The registry's VersionInfo for a number, or the production version when None."""
    if version in (None, "", "production"):
        info = registry.production(model)
        if info is None:
            raise NotFound(f"{model} has no production version; name the version to package.")
        return info
    return registry.version(model, version)


def test_split(store: ObjectStore, run_id: str):
    """The run's held-out test table, the rows parity is checked on."""
    import pandas as pd

    key = f"processed/{run_id}/test.parquet"
    if not store.exists(key):
        raise NotFound(
            f"The test split of run {run_id} ({key}) is not in the object store; parity cannot be checked."
        )
    return pd.read_parquet(io.BytesIO(store.get_bytes(key)))


def package_model(
    model: str,
    version: int | str | None = None,
    *,
    repo: Path | None = None,
    settings: Settings | None = None,
    store: ObjectStore | None = None,
    registry=None,
) -> PackageResult:
    """Export, check and publish one registered version as Triton repositories (cpu and gpu)."""
    from issueops.packaging.onnx import export_model
    from issueops.training.train import read_manifest

    settings = settings or Settings.from_env()
    store = store or open_store(settings)
    if registry is None:
        from issueops.registry.lifecycle import Registry

        registry = Registry.from_settings(settings)
    info = resolve_version(registry, model, version)
    if not info.run_id:
        raise NotFound(
            f"Version {info.version} of {model} records no issueops run, so its test split is unknown."
        )
    repo = Path(repo) if repo else settings.home / "triton"
    with tempfile.TemporaryDirectory(prefix="issueops-package-") as work:
        work = Path(work)
        model_dir = registry.download(model, info.version, work / "download")
        manifest = read_manifest(model_dir)
        tabular = manifest.get("format") == "sklearn-pipeline" and manifest.get("servable", True)
        frame = test_split(store, info.run_id) if tabular else None  # RL policies: checked on the env
        exported = export_model(model_dir, frame, work / triton.ONNX_FILE)
        parameters = {
            "algorithm": exported.algorithm,
            "task_type": exported.task_type,
            "run_id": info.run_id,
            "feature_columns": exported.feature_columns,
        }
        if exported.classes:
            parameters["classes"] = exported.classes
        configs = {
            target: triton.model_config(
                model, exported.inputs, exported.outputs, target=target, parameters=parameters
            )
            for target in triton.TARGETS
        }
        local = triton.write_model(repo, model, info.version, configs["cpu"], onnx_path=exported.onnx_path)
        targets, files = {}, {}
        for target, config in configs.items():
            staging = work / target
            triton.write_model(staging, model, info.version, config, onnx_path=exported.onnx_path)
            files[target] = triton.file_digests(staging)
            targets[target] = triton.upload_repository(store, staging, model, info.version, target)
        package = {
            "model": model,
            "version": info.version,
            "run_id": info.run_id,
            "packaged_at": utcnow(),
            "export": {k: v for k, v in exported.to_dict().items() if k != "onnx_path"},
            "targets": {t: {"uri": targets[t], "files": files[t], "plan": False} for t in targets},
        }
        # Written last: a reader that finds package.json finds every file it names.
        store.put_bytes(
            f"{triton.store_prefix(model, info.version)}/{triton.PACKAGE_FILE}",
            json.dumps(package, indent=2, default=str).encode(),
        )
    return PackageResult(model, info.version, info.run_id, str(local), targets, package["export"])


def package_step(run_id: str, repo: str | None = None) -> dict[str, Any]:
    """Package the version this run registered; a model that cannot predict is recorded, not failed.

    repo: where to write the local Triton repository (a KFP Model artifact's path), default
    $ISSUEOPS_HOME/triton.
    """
    from issueops.packaging.onnx import NotServable

    settings = Settings.from_env()
    store = open_store(settings)
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "package"):
        registration = record.read("registration.json")
        if not registration:
            raise NotFound(f"Run {run_id} registered no model version, so there is nothing to package.")
        try:
            result = package_model(
                registration["model_name"],
                registration["version"],
                repo=Path(repo) if repo else None,
                settings=settings,
                store=store,
            ).to_dict()
        except NotServable as exc:
            result = {
                "model": registration["model_name"],
                "version": int(registration["version"]),
                "servable": False,
                "reason": str(exc),
            }
            record.write("serving.json", {"endpoint": None, **result})
        record.write("package.json", result)
    return result


def tensorrt_step(run_id: str, out_dir: str | None = None) -> dict[str, Any]:
    """Build a TensorRT plan for the packaged version on this (GPU) node.

    A graph TensorRT cannot run, or a machine without TensorRT, is recorded as skipped (GPU
    nodes then serve the ONNX model through ONNX Runtime's TensorRT accelerator); an engine that
    disagrees with ONNX Runtime is recorded as rejected. Neither fails the run.
    """
    from issueops.errors import Unavailable
    from issueops.packaging.tensorrt import EngineCheckError, build_for_package

    settings = Settings.from_env()
    store = open_store(settings)
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "build_tensorrt_engine"):
        package = record.read("package.json") or {}
        if package.get("servable") is False or not package:
            outcome = {"status": "skipped", "reason": "nothing was packaged"}
        else:
            plan_dir = Path(out_dir) if out_dir else settings.home / "tensorrt" / run_id
            try:
                engine = build_for_package(store, package["model"], int(package["version"]), plan_dir)
                outcome = {"status": "built", **engine.to_dict()}
            except Unavailable as exc:
                outcome = {"status": "skipped", "reason": str(exc)}
            except EngineCheckError as exc:
                outcome = {"status": "rejected", "reason": str(exc)}
        outcome["time"] = utcnow()
        record.write("tensorrt.json", outcome)
    return outcome


def deploy_step(run_id: str) -> dict[str, Any]:
    """Make the packaged version reachable and record the endpoint in runs/<run_id>/serving.json.

    ISSUEOPS_SERVING=kserve applies an InferenceService (a canary until the version is approved);
    the default, local, relies on `issueops serve`, which follows the production alias by itself.
    """
    settings = Settings.from_env()
    store = open_store(settings)
    record = RunRecord(store, run_id)
    with step_guard(store, run_id, "deploy"):
        from issueops.pipeline.steps import promote_registered

        package = record.read("package.json") or {}
        registration = promote_registered(run_id, settings, store)
        if package.get("servable") is False:
            return record.read("serving.json") or {}
        if not package:
            raise NotFound(f"Run {run_id} has no package; the package step must run first.")
        model, version = package["model"], int(package["version"])
        approved = registration.get("alias") == "production"
        mode = os.environ.get("ISSUEOPS_SERVING", "local").lower()
        if mode == "kserve":
            from issueops.serving.kserve import deploy_version

            serving = deploy_version(model, version, store=store, approved=approved).to_dict()
        else:
            http = settings.serve_url
            serving = {
                "mode": "local",
                "endpoint": f"{http}/v2/models/{model}",
                "grpc": os.environ.get("ISSUEOPS_SERVE_GRPC", DEFAULT_GRPC_URL),
                "model": model,
                "version": version,
                "served_version": version if approved else _production_version(settings, model),
                "note": "`issueops serve` serves the production version and follows it without a restart.",
            }
        serving["time"] = utcnow()
        record.write("serving.json", serving)
    return serving


def _production_version(settings: Settings, model: str) -> int | None:
    from issueops.registry.lifecycle import Registry

    info = Registry.from_settings(settings).production(model)
    return info.version if info else None
