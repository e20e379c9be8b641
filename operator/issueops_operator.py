"""The TrainingRequest operator. Thin kopf handlers over issueops.lifecycle.runtime.

    kopf run --standalone --namespace=issueops operator/issueops_operator.py
    ISSUEOPS_OPERATOR_LOCAL=1 kopf run ...          # attempts on the local runner, not KFP
    python operator/issueops_operator.py --local --namespace default

On create the spec is validated (an invalid one is Failed for good: kopf.PermanentError); a timer
then moves each active request one step at a time: submit (KFP at ISSUEOPS_KFP_HOST, or the local
runner), follow, decide, ask on the issue, roll back, time out. A change of spec.operatorInput
applies operator input; deleting a request cancels its run. At most ISSUEOPS_MAX_RUNNING (10)
attempts run at once and the rest start in creation order. The run id is written to the status
before its run is submitted, and submitting a known run id finds the run, so a restarted
operator picks running requests up and submits none twice.

This directory is deliberately not a package: a package named `operator` would shadow the
standard library's `operator` module.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

import kopf

from issueops.config import Settings
from issueops.custom_resources import api_client
from issueops.errors import InvalidInput, IssueOpsError
from issueops.lifecycle.crd import GROUP, PLURAL, VERSION, require_served
from issueops.lifecycle.runtime import OperatorRuntime
from issueops.lifecycle.state_machine import ACTIVE_PHASES
from issueops.logs import JsonFormatter

RESOURCE = (GROUP, VERSION, PLURAL)
INTERVAL = Settings.from_env().operator_interval_s
MODELS_INTERVAL = 60  # seconds between reads of the registry and triggers.json for the gauges


@contextlib.contextmanager
def kopf_errors():
    """Our errors as kopf's outcomes, as issueops.errors.ANSWERS says for each kind: temporary
    (handled again after a delay) or permanent (not again for this change)."""
    try:
        yield
    except IssueOpsError as error:
        delay = error.outcome().kopf_delay_s
        if delay is None:
            raise kopf.PermanentError(str(error)) from error
        raise kopf.TemporaryError(str(error), delay=delay) from error


@kopf.on.login()
def login(**kwargs):
    """In a pod its service account; elsewhere the file KUBECONFIG names (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    # Without the CRD kopf would serve nothing, silently, for good (scanning is off): wait for it,
    # saying why, and start serving once it is there. Refused credentials are named too.
    with kopf_errors():
        require_served(api_client("the operator"))
    settings.persistence.finalizer = f"{GROUP}/cancel-run"
    # Least privilege: no cluster-wide watching of namespaces and CRDs.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # `--local` arrives in the memo (main); without it ISSUEOPS_OPERATOR_LOCAL decides.
    memo.runtime = OperatorRuntime.from_env(local=True if memo.get("local") else None)
    ours = Settings.from_env()
    if ours.log_json:  # kopf set up its own handlers; their lines become ours
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter("issueops-operator"))
    if ours.operator_metrics_port and "metrics_server" not in memo:
        # kopf has no Prometheus endpoint of its own: prometheus_client's, in a daemon thread.
        from prometheus_client import start_http_server

        try:
            memo.metrics_server, _ = start_http_server(ours.operator_metrics_port)
        except OSError as error:  # requests still move; the scrape target shows down, and why is here
            logging.getLogger(__name__).error(
                "no /metrics: port %d is not free (%s)", ours.operator_metrics_port, error
            )
    if ours.operator_metrics_port and "models_stop" not in memo:
        memo.models_stop = threading.Event()
        threading.Thread(
            target=_observe_models, args=(ours, memo.models_stop), name="model-gauges", daemon=True
        ).start()


def _observe_models(settings: Settings, stop: threading.Event) -> None:
    """Production versions and drift checks as gauges, read again every MODELS_INTERVAL seconds."""
    from issueops.monitoring.metrics import observe_models
    from issueops.registry.lifecycle import Registry
    from issueops.store import open_store

    # The first read waits one interval too: MLflow is not imported while the operator starts.
    # The registry and store are made at the first tick that can make them, then kept.
    registry = store = None
    while not stop.wait(MODELS_INTERVAL):
        try:
            if registry is None or store is None:
                registry, store = Registry.from_settings(settings), open_store(settings)
            observe_models(registry, store)
        except Exception as error:  # the registry being away must not end the operator
            logging.getLogger(__name__).warning("model gauges not refreshed: %s", error)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_):
    if "models_stop" in memo:
        memo.models_stop.set()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.index(*RESOURCE)
def requests_by_phase(namespace, name, status, meta, **_):
    return {(namespace, name): (status.get("phase") or "Pending", meta.get("creationTimestamp") or "")}


@kopf.on.create(*RESOURCE)
def create(body, patch, memo: kopf.Memo, **_):
    with kopf_errors():
        try:
            patch.status.update(memo.runtime.accept(body))
        except InvalidInput as error:
            patch.status.update(memo.runtime.rejected(body, error))
            raise


def _active(status, **_) -> bool:
    return (status.get("phase") or "Pending") in ACTIVE_PHASES


@kopf.timer(*RESOURCE, interval=INTERVAL, initial_delay=1, when=_active)
def follow(body, patch, memo: kopf.Memo, requests_by_phase: kopf.Index, **_):
    with kopf_errors():
        status = memo.runtime.step(body, requests_by_phase)
    if status:
        patch.status.update(status)


@kopf.on.field(*RESOURCE, field="spec.operatorInput")
def operator_input(body, new, patch, memo: kopf.Memo, **_):
    if not new:
        return
    with kopf_errors():
        status = memo.runtime.operator_input(body)
    if status:
        patch.status.update(status)


@kopf.on.delete(*RESOURCE)
def delete(body, memo: kopf.Memo, **_):
    with kopf_errors():
        memo.runtime.cancel(body)


def main(argv: list[str]) -> int:
    """`python operator/issueops_operator.py [--local] [--namespace NS]...` (kopf run, embedded)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="run attempts on the local runner")
    parser.add_argument("--namespace", "-n", action="append", default=[], help="namespace(s)")
    parser.add_argument("--liveness", help="e.g. http://0.0.0.0:8080/healthz")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    kopf.configure(verbose=settings.debug)
    kopf.run(
        standalone=True,
        memo=kopf.Memo(local=args.local),
        namespaces=args.namespace or [settings.namespace if settings.namespace_given else "default"],
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
