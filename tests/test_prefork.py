"""The local runner's tasks as forks of a preloaded process: same results, same failures, no leftovers."""

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kfp import dsl, local

from issueops.config import Settings
from issueops.errors import DatasetError
from issueops.pipeline import prefork
from issueops.pipeline.execution import check_inputs, preflight
from issueops.pipeline.prefork import Preload, active_server, prefork_tasks, preload_for, task_parts
from issueops.spec.body import parse_issue_body

NOTHING = Preload(shared=(), data=(), publish=())


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _add(a: int, b: int) -> int:
    import os

    return a + b + int(os.environ.get("PREFORK_TEST_OFFSET", "0"))


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _crash() -> int:
    import os

    os._exit(7)


@dsl.pipeline
def _sum_pipeline(a: int, b: int) -> int:
    return _add(a=_add(a=a, b=b).output, b=b).output


@pytest.fixture
def local_runner(tmp_path):
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=False
    )


def test_task_parts_recognises_only_plain_lightweight_components():
    command = list(_add.component_spec.implementation.container.command)
    source, args = task_parts([*command, "--executor_input", "{}", "--function_to_execute", "_add"])
    assert "def _add(" in source and args == ["--executor_input", "{}", "--function_to_execute", "_add"]
    assert task_parts(["python", "-m", "kfp.dsl.executor_main"]) is None
    with_pip = dsl.component(base_image="python:3.11")(
        _add.python_func
    ).component_spec.implementation.container
    assert task_parts([*with_pip.command, "--function_to_execute", "_add"]) is None


def test_every_module_preload_for_names_imports():
    """A renamed module (or algorithm) would only make the preloaded process fail at start, where
    the run falls back to subprocesses unnoticed: every name preload_for lists must import."""
    from issueops.spec.catalog import ALGORITHMS

    assert set(prefork._EXTRA) <= set(ALGORITHMS), "extra imports of an algorithm the catalog lacks"
    names = {
        name
        for algorithm in ALGORITHMS.values()
        for lane in dataclasses.astuple(preload_for(algorithm.name, algorithm.learning_type))
        for name in lane
    }
    missing = []
    for name in sorted(names):
        if name.split(".")[0] == "issueops":
            importlib.import_module(name)  # ours: imported, so a broken import shows too
        elif importlib.util.find_spec(name) is None:
            missing.append(name)
    assert not missing
    assert (
        "issueops.pipeline.steps" in names and "torch" in names
    )  # the catalog's learning types all took part


def test_pipeline_runs_through_the_preloaded_process(local_runner, monkeypatch):
    monkeypatch.setenv("PREFORK_TEST_OFFSET", "100")
    with prefork_tasks(Preload(shared=("kfp.dsl.executor_main",), data=(), publish=())) as server:
        assert server is not None and active_server() is server
        calls = []
        original = server.run
        monkeypatch.setattr(server, "run", lambda cmd, env: calls.append(cmd[-1]) or original(cmd, env))
        assert _sum_pipeline(a=1, b=2).output == 1 + 2 + 100 + 2 + 100  # the environment reached each task
        assert calls == ["_add", "_add"]
        process = server.process
    assert active_server() is None
    assert process.poll() is not None  # the server ended with the run


def test_a_task_that_dies_fails_like_a_subprocess(tmp_path):
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True
    )
    with prefork_tasks(NOTHING), pytest.raises(RuntimeError, match="FAILURE"):
        _crash()


def test_call_returns_results_and_raises_the_callers_error_class(tmp_path):
    spec = parse_issue_body(
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: no-such-dataset\n"
    )
    with prefork_tasks(NOTHING) as server:
        assert server.call(os.getpid) != os.getpid()
        with pytest.raises(DatasetError, match="no-such-dataset"):
            server.call(check_inputs, spec, Settings(home=tmp_path))


def test_nested_use_shares_one_server():
    with prefork_tasks(NOTHING) as outer, prefork_tasks(NOTHING) as inner:
        assert inner is outer


def test_switched_off_by_setting(monkeypatch):
    monkeypatch.setenv("ISSUEOPS_LOCAL_TASKS", "subprocess")
    with prefork_tasks(NOTHING) as server:
        assert server is None and active_server() is None


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_publish_steps_fork_from_their_own_lane_and_every_lane_ends_with_the_run(tmp_path):
    with prefork_tasks(NOTHING) as server:
        while not (server._dir and os.path.exists(os.path.join(server._dir, "publish.sock"))):
            time.sleep(0.02)
        data_parent = server.call(os.getppid)
        publish_parent = server.call(os.getppid, lane="publish")
        assert data_parent == server.process.pid and publish_parent != data_parent
    assert _wait_gone(publish_parent) and _wait_gone(data_parent)


def test_the_server_ends_when_the_run_that_started_it_dies():
    script = (
        "import os\nfrom issueops.pipeline.prefork import Preload, prefork_tasks\n"
        "with prefork_tasks(Preload((), (), ())) as server:\n"
        "    print(server.process.pid, server.call(os.getppid, lane='publish'), flush=True)\n"
        "    os._exit(0)  # no clean-up: as if the run were killed\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    data_server, publish_server = map(int, out.stdout.split())
    assert _wait_gone(data_server) and _wait_gone(publish_server)


def test_preflight_checks_here_when_the_preloaded_process_is_gone(tmp_path):
    spec = parse_issue_body(
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: no-such-dataset\n"
    )
    with prefork_tasks(NOTHING) as server:
        server.process.kill()
        server.process.wait()
        with pytest.raises(DatasetError, match="no-such-dataset"):
            preflight(spec, Settings(home=tmp_path))


LINGERING_RUN = """
import sys
from kfp import dsl, local
from issueops.pipeline.prefork import Preload, prefork_tasks


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def linger(path: str):
    import os
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "600"])
    with open(path + ".tmp", "w") as out:
        out.write(f"{os.getpid()} {child.pid}")
    os.rename(path + ".tmp", path)
    time.sleep(600)


local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2], raise_on_error=False)
with prefork_tasks(Preload(("kfp.dsl.executor_main",), (), ())):
    linger(path=sys.argv[1])
"""


@pytest.mark.parametrize("tasks", ["prefork", "subprocess"])
def test_a_running_task_and_its_children_die_with_the_run_that_started_it(tmp_path, tasks):
    """kill -9 of the run (not of its process group): its task, and what the task started, end too."""
    script = tmp_path / "run.py"
    script.write_text(LINGERING_RUN)
    pids = tmp_path / "pids"
    run = subprocess.Popen(
        [sys.executable, str(script), str(pids), str(tmp_path / "root")],
        env={**os.environ, "ISSUEOPS_LOCAL_TASKS": tasks},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not pids.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        task, grandchild = map(int, pids.read_text().split())
        assert _alive(task) and _alive(grandchild)
        run.kill()
        run.wait()
        assert _wait_gone(task) and _wait_gone(grandchild)
    finally:
        run.kill()
        run.wait()
        for pid in _session(run.pid):
            os.kill(pid, 9)


def _session(sid: int) -> list[int]:
    """The processes still running in session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found
