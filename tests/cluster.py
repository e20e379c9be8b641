"""What the `cluster` tests share: the real control plane (tests/controlplane), admin and
ServiceAccount clients, server-side apply, the TrainingRequest CRD, and the operator as a process.

The session fixture `control_plane` (tests/conftest.py) builds and starts etcd, kube-apiserver and
kube-controller-manager once per run; without Go, or when the build fails, every `cluster` test
is skipped with the reason in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from issueops.lifecycle.crd import GROUP, VERSION, training_request_crd
from tests.controlplane import ControlPlane, Unavailable, running

REPO = Path(__file__).resolve().parent.parent
OPERATOR = REPO / "operator" / "issueops_operator.py"
CACHE = REPO / ".cluster" / "crds"  # third-party CRDs taken from Go modules


def session_control_plane(root: Path) -> Iterator[ControlPlane]:
    """Yield a started control plane, or skip the requesting tests with the reason."""
    try:
        with running(root) as plane:
            yield plane
    except Unavailable as error:
        pytest.skip(f"cluster tests need the control plane: {error}")


def client_for(kubeconfig: Path):
    """An ApiClient of its own for `kubeconfig` (the process-wide default is left alone)."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def server_side_apply(
    api,
    manifest: dict[str, Any],
    *,
    manager: str = "issueops-tests",
    dry_run: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """PATCH application/apply-patch+yaml (force) of any object; the stored object comes back."""
    path = object_path(api, manifest)
    query = [("fieldManager", manager), ("force", "true")]
    if dry_run:
        query.append(("dryRun", "All"))
    if strict:
        query.append(("fieldValidation", "Strict"))
    return api.call_api(
        path,
        "PATCH",
        query_params=query,
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=manifest,
        auth_settings=["BearerToken"],
        response_type="object",
        _return_http_data_only=True,
    )


def object_path(api, manifest: dict[str, Any]) -> str:
    """The REST path of a manifest's object; plural and scope from the API server's discovery."""
    group_version, kind = manifest["apiVersion"], manifest["kind"]
    prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    listing = api.call_api(
        prefix,
        "GET",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        response_type="object",
        _return_http_data_only=True,
    )
    found = [r for r in listing["resources"] if r["kind"] == kind and "/" not in r["name"]]
    assert found, f"the API server serves no {kind} in {group_version}"
    meta = manifest["metadata"]
    namespace = f"/namespaces/{meta['namespace']}" if found[0]["namespaced"] else ""
    return f"{prefix}{namespace}/{found[0]['name']}/{meta['name']}"


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def install_crd(api, crd: dict[str, Any]) -> None:
    """Server-side apply a CRD (the API server checks it is structural) and wait until Established."""
    server_side_apply(api, crd)
    wait_established(api, [crd["metadata"]["name"]], timeout=30)


def wait_established(api, names: list[str] | tuple[str, ...], timeout: float = 60) -> None:
    """Wait until each CRD named is Established: its resources are served from then on."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api)

    def established(name: str) -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in names:
        wait_until(lambda name=name: established(name), timeout, f"{name} to be Established")


def written(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Where `stored` differs from what was sent (fields the API server added are fine)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        return [p for key, value in sent.items() for p in written(value, stored.get(key), f"{path}.{key}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: {stored!r}"]
        return [
            p
            for i, (a, b) in enumerate(zip(sent, stored, strict=True))
            for p in written(a, b, f"{path}[{i}]")
        ]
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


def install_training_request_crd(api) -> dict[str, Any]:
    crd = training_request_crd()
    install_crd(api, crd)
    return crd


def new_namespace(api, prefix: str = "t") -> str:
    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def delete_namespace(api, name: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(name)


def service_account_token(api, namespace: str, name: str, seconds: int = 3600) -> str:
    """A token for the ServiceAccount from the TokenRequest API, as a pod would be given."""
    from kubernetes import client

    answer = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": seconds}}
    )
    return answer.status.token


def training_request(name: str, spec: dict[str, Any], **metadata) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRequest",
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


# A request whose attempt is quick: a one-tree forest on 569 rows. Its accuracy (~0.9) misses
# 0.99, so the request waits for operator input; with 0.5 it passes.
FAST_SPEC = {
    "learning_type": "supervised",
    "algorithm": "random_forest",
    "dataset_id": "sklearn:breast_cancer",
    "model_name": "bc-rf",
    "hyperparameters": {"n_estimators": 1, "max_depth": 1},
    "evaluation_threshold": 0.99,
    "max_retry": 1,
}


def fast_spec(**changes) -> dict[str, Any]:
    return {**FAST_SPEC, **changes}


@dataclass
class OperatorProcess:
    """`kopf run --standalone --namespace=NS operator/issueops_operator.py` in its own process,
    attempts on the local runner (ISSUEOPS_OPERATOR_LOCAL=1) under `home`."""

    kubeconfig: Path
    namespace: str
    home: Path
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ISSUEOPS_", "KUBERNETES_")) and k != "KUBECONFIG"
        }
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "ISSUEOPS_HOME": str(self.home),
                "ISSUEOPS_OPERATOR_LOCAL": "1",
                "ISSUEOPS_OPERATOR_INTERVAL": "0.5",
                "ISSUEOPS_NAMESPACE": self.namespace,
                "ISSUEOPS_DATA_ROOTS": str(REPO),
                "ISSUEOPS_GITHUB_THROTTLE": "0",
                "ISSUEOPS_RETRY_BACKOFF": "0s",
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env or {})
        return env

    def start(self) -> OperatorProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--standalone",
                    f"--namespace={self.namespace}",
                    str(OPERATOR),
                ],
                cwd=REPO,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20) -> int | None:
        """Signal the operator (SIGKILL: killed mid-attempt, no clean-up) and wait for it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# The CRDs of the operators issueops' manifests target, from their own Go modules (KubeRay: the
# newest release the module proxy serves; KServe: the one release it serves, v0.21.0 is refused;
# Prometheus Operator: the one release it serves, its CRDs as the project's example installs them).
THIRD_PARTY_CRDS = {
    "kuberay": ("github.com/ray-project/kuberay/ray-operator", "v1.5.0", "config/crd"),
    "kserve": ("github.com/kserve/kserve", "v0.16.0", "config/crd"),
    "prometheus-operator": (
        "github.com/prometheus-operator/prometheus-operator",
        "v0.85.0",
        "example/prometheus-operator-crd",
    ),
}


def third_party_crds(name: str) -> Path:
    """The CRD folder of a module (KubeRay's and KServe's config/crd are kustomizations; Prometheus
    Operator's is one file per CRD), copied to .cluster/crds/<name>-<version>."""
    module, version, inside = THIRD_PARTY_CRDS[name]
    target = CACHE / f"{name}-{version}"
    if target.is_dir():  # put in place whole, by one rename
        return target
    if shutil.which("go") is None:
        pytest.skip(f"Go is needed to fetch {module}@{version}")
    answer = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        cwd=REPO / "tests" / "controlplane",
    )
    found = json.loads(answer.stdout or "{}")
    if answer.returncode != 0 or "Dir" not in found:
        pytest.skip(f"go mod download {module}@{version}: {found.get('Error') or answer.stderr.strip()}")
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(Path(found["Dir"]) / inside, partial)
    for path in [partial, *partial.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the module cache is read-only
    partial.replace(target)
    return target
