"""Many processes changing one model at once, through one SQLite registry: the registry stays whole.

Each promoter is a real process (two `issueops run` of one spec do exactly this): it registers a
version and approves it while the others do the same, and a rollbacker moves production back in
between. Whatever the interleaving, exactly one version is Approved and in production, every other
version that was approved is Archived once, and each move's audit record names the true previous
production version.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

from issueops.errors import Conflict, NotFound
from issueops.registry.lifecycle import Registry
from issueops.registry.names import APPROVED, ARCHIVED

PROMOTERS = 6


def _promote(uri: str, model: str, index: int, work: str, barrier, environ: dict) -> None:
    os.environ.update(environ)
    from tests.test_registry import result_for

    registry = Registry(uri)
    registry.list_models()  # MLflow loaded and the store open before the race starts
    result = result_for(model, issue=index, tmp=Path(work) / f"p{index}")
    result.run_id = f"train-20260101-000000-{index:04x}"  # the counter in result_for restarts per process
    barrier.wait(timeout=120)
    mlflow_run = registry.log_run(result, None)
    auto = index % 2 == 0  # the pipeline's way (pending, then approve) and the direct one
    info = registry.register_version(
        model, result, mlflow_run, Path(result.artifacts["model"]), approve=auto, actor=f"p{index}"
    )
    if not auto:
        registry.approve(model, info.version, f"p{index}", reason="approved by its run")


def _roll_back(uri: str, model: str, barrier, environ: dict) -> None:
    os.environ.update(environ)
    registry = Registry(uri)
    registry.list_models()
    barrier.wait(timeout=120)
    for _ in range(4):
        time.sleep(random.random())
        try:
            registry.rollback_production(model, reason="concurrent rollback", actor="rollbacker")
        except (Conflict, NotFound):  # nothing to roll back (to) yet
            pass


def _race(uri: str, model: str, tmp_path: Path, environ: dict, promoters: int = PROMOTERS) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(promoters + 1)
    processes = [
        context.Process(target=_promote, args=(uri, model, i, str(tmp_path), barrier, environ))
        for i in range(promoters)
    ]
    processes.append(context.Process(target=_roll_back, args=(uri, model, barrier, environ)))
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def assert_consistent(registry: Registry, model: str, versions: int) -> None:
    info = registry.show(model)
    statuses = {v.version: v.status for v in info.versions}
    assert len(statuses) == versions
    approved = [v for v, s in statuses.items() if s == APPROVED]
    assert approved == [info.production], statuses  # exactly one Approved, and it is in production
    assert all(s == ARCHIVED for v, s in statuses.items() if v != info.production), statuses

    history = registry.history(model)
    moves = [r for r in history if r.action in ("promote", "rollback")]
    previous = None
    for move in moves:  # each move starts where the one before it ended
        assert move.from_version == previous, [(m.action, m.from_version, m.to_version) for m in moves]
        previous = move.to_version
    assert previous == info.production
    archived = [r.to_version for r in history if r.action == "archive"]
    left = [m.from_version for m in moves if m.from_version is not None]
    assert sorted(archived) == sorted(left)  # archived once per time it left production, never twice
    assert sorted(r.to_version for r in history if r.action == "approve") == list(range(1, versions + 1))


def test_concurrent_promoters_leave_one_production_version_and_a_true_audit_trail(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Registry(uri).list_models()  # the schema exists: this test is about promotion, not creation
    _race(uri, "raced", tmp_path, {})
    assert_consistent(Registry(uri), "raced", PROMOTERS)


def test_concurrent_promoters_in_pods_sharing_a_lease_keep_the_registry_whole(tmp_path):
    """As pods on a cluster do: the lock is a Kubernetes Lease (here the coordination API on loopback)."""
    from tests.lease_double import LeaseApiDouble

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Registry(uri).list_models()
    with LeaseApiDouble() as api:
        environ = {
            "ISSUEOPS_REGISTRY_LOCK": "lease",
            "KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig")),
        }
        _race(uri, "leased", tmp_path, environ, promoters=4)
        holders = {who for verb, _, who in api.writes if who}
    assert len(holders) >= 4  # every promoter held the model's lease in turn
    assert not (tmp_path / "mlflow.db.locks" / "model-leased.lock").exists()
    assert_consistent(Registry(uri), "leased", 4)


def _first_use(home: str, barrier) -> None:
    os.environ["ISSUEOPS_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow  # noqa: F401 - loaded before the race: the race is the database's creation

    registry = Registry.from_settings()
    barrier.wait(timeout=120)
    registry.list_models()
    assert registry.production("nothing-yet") is None


def test_processes_starting_at_once_on_a_fresh_home_all_find_the_registry(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    home = tmp_path / "fresh-home"
    processes = [context.Process(target=_first_use, args=(str(home), barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * 4
    assert Registry(f"sqlite:///{home / 'mlflow.db'}").list_models() == []
