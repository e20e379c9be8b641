"""package and deploy: a registered version becomes Triton model repositories, then an endpoint.

`package_model` exports the version to ONNX (parity-checked on its run's test split), writes the
local repository (`issueops package`), and uploads one repository per target to the object store
(`triton/<model>/<version>/{cpu,gpu}/`, then `package.json`). `package_step` and `deploy_step`
are what the pipeline's components call; both report in runs/<run_id>/.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from issueops.config import Settings, utcnow
from issueops.errors import NotFound
from issueops.packaging import triton
from issueops.store import ObjectStore, open_store


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
            "packaged_at": utcnow().isoformat(),
            "export": {k: v for k, v in exported.to_dict().items() if k != "onnx_path"},
            "targets": {t: {"uri": targets[t], "files": files[t], "plan": False} for t in targets},
        }
        # Written last: a reader that finds package.json finds every file it names.
        store.put_bytes(
            f"{triton.store_prefix(model, info.version)}/{triton.PACKAGE_FILE}",
            json.dumps(package, indent=2, default=str).encode(),
        )
    return PackageResult(model, info.version, info.run_id, str(local), targets, package["export"])
