"""manifests/monitoring on the real API server: the CronJob that runs `issueops monitor check
--open-issues`, the CloudEvents receiver, the operator's metrics Service and the Grafana dashboard
(core kinds), and, under prometheus/, the ServiceMonitors and the PrometheusRule against Prometheus
Operator's own CRDs (from its Go module). Each kustomization passes a strict server-side dry run
into the issueops namespace, and every object it renders is stored in a namespace of its own with
strict field validation and read back as written. No Prometheus Operator runs: nothing scrapes."""

from __future__ import annotations

import pytest
import yaml

from tests.cluster import (
    REPO,
    server_side_apply,
    third_party_crds,
    wait_established,
    written,
)

pytestmark = pytest.mark.cluster

# What manifests/monitoring/prometheus/ needs of Prometheus Operator (its other CRDs are for the
# Prometheus, Alertmanager and scrape objects the user's own installation brings).
PROMETHEUS_OPERATOR_CRDS = ("servicemonitors", "prometheusrules")
KUSTOMIZATIONS = ("monitoring", "monitoring/prometheus")


@pytest.fixture(scope="module")
def prometheus_operator(kube, control_plane):
    """Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, server-side applied as its
    example/prometheus-operator-crd installs them, and the issueops namespace."""
    crds = third_party_crds("prometheus-operator")
    for plural in PROMETHEUS_OPERATOR_CRDS:
        path = crds / f"monitoring.coreos.com_{plural}.yaml"
        control_plane.kubectl("apply", "--server-side", "-f", str(path))
    wait_established(kube, [f"{plural}.monitoring.coreos.com" for plural in PROMETHEUS_OPERATOR_CRDS])
    server_side_apply(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "issueops"}})
    return kube


def rendered(control_plane, directory: str) -> list[dict]:
    """The objects `kubectl apply -k manifests/<directory>` would send (kubectl's own kustomize)."""
    out = control_plane.kubectl("kustomize", str(REPO / "manifests" / directory)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_the_monitoring_manifests_pass_a_strict_server_dry_run(prometheus_operator, control_plane, directory):
    dry = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",  # fieldValidation=Strict: an undeclared field is an error
        "-k",
        str(REPO / "manifests" / directory),
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines and all(line.endswith("serverside-applied (server dry run)") for line in lines), dry.stdout
    assert len(lines) == len(rendered(control_plane, directory))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_every_monitoring_object_is_stored_strictly_and_read_back_as_written(
    prometheus_operator, control_plane, namespace, directory
):
    objects = rendered(control_plane, directory)
    for manifest in objects:
        manifest["metadata"]["namespace"] = namespace
        stored = server_side_apply(prometheus_operator, manifest)
        assert written(manifest, stored) == [], f"{manifest['kind']} {manifest['metadata']['name']}"
    kinds = {m["kind"] for m in objects}
    expected = (
        {"ServiceMonitor", "PrometheusRule"}
        if directory.endswith("prometheus")
        else {"CronJob", "Deployment", "Service", "ServiceAccount", "ConfigMap"}
    )
    assert kinds == expected


def test_the_check_cronjob_runs_monitor_check_opening_issues_as_stored(
    prometheus_operator, control_plane, namespace
):
    """The CronJob read back through the batch/v1 API: the command, the schedule and the one-at-a-time
    policy the manifest promises are what the API server keeps."""
    from kubernetes import client

    [cronjob] = [m for m in rendered(control_plane, "monitoring") if m["kind"] == "CronJob"]
    cronjob["metadata"]["namespace"] = namespace
    server_side_apply(prometheus_operator, cronjob)
    stored = client.BatchV1Api(prometheus_operator).read_namespaced_cron_job(
        cronjob["metadata"]["name"], namespace
    )
    [container] = stored.spec.job_template.spec.template.spec.containers
    assert [*container.command, *container.args] == ["issueops", "monitor", "check", "--open-issues"]
    assert (stored.spec.schedule, stored.spec.time_zone) == ("17 * * * *", "Etc/UTC")
    assert stored.spec.concurrency_policy == "Forbid"
