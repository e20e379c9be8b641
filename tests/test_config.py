"""The one settings object: what it reads, that nothing else reads ISSUEOPS_* from the
environment, and that the README's settings table is rendered from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from issueops.config import Settings, settings_table
from issueops.errors import InvalidInput
from tests.conftest import REPO

# Code that may touch os.environ, and why. Each entry is (file, what it does there); a new
# reader of an issueops setting belongs in issueops/config.py instead.
ENVIRON_ALLOWED = {
    # The environment handed to a child process: the attempt, the prefork server and its tasks,
    # git for the history commit. They read their settings from it with Settings.from_env.
    "issueops/bridge/backends.py",
    "issueops/pipeline/prefork.py",  # also: a forked task takes on the environment of the task it runs
    "issueops/reporting/history.py",
    # Third-party variables, read or set for the library that owns them: prometheus_client's
    # multiprocess directory, Ray's usage statistics and TLS, kubectl's KUBECONFIG.
    "issueops/monitoring/metrics.py",
    "issueops/serving/server.py",
    "issueops/training/reinforcement/ray.py",
    "issueops/training/reinforcement/environment.py",
    "issueops/custom_resources.py",
}


def _environ_uses(tree: ast.AST) -> list[ast.AST]:
    """Every `os.environ` / `os.getenv` / `environ` name in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found.extend(a for a in node.names if a.name in ("environ", "getenv"))
    return found


def _our_setting_names(tree: ast.AST) -> set[str]:
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("ISSUEOPS_", "MLFLOW_", "GITHUB_"))
        and node.value.replace("_", "").isalnum()
        and node.value.isupper()
    }


def test_only_config_reads_issueops_settings_from_the_environment():
    readers = {}
    for path in sorted([*(REPO / "issueops").rglob("*.py"), *(REPO / "operator").rglob("*.py")]):
        relative = path.relative_to(REPO).as_posix()
        if relative == "issueops/config.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if _environ_uses(tree) and relative not in ENVIRON_ALLOWED:
            readers[relative] = sorted(_our_setting_names(tree)) or ["os.environ"]
    assert readers == {}, "read settings through issueops.config.Settings"


def test_the_allowed_modules_name_no_setting_of_ours_beside_their_environ_use():
    """An allowed module hands environments on; it must not read a setting of ours on the side."""
    for relative in ENVIRON_ALLOWED:
        tree = ast.parse((REPO / relative).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                reads = node.func.attr in ("get", "setdefault", "pop") and (
                    isinstance(target, ast.Attribute) and target.attr == "environ"
                )
                if reads and node.args and isinstance(node.args[0], ast.Constant):
                    assert not str(node.args[0].value).startswith("ISSUEOPS_"), relative


def test_readme_settings_table_matches_settings():
    assert settings_table() in (REPO / "README.md").read_text(), (
        "run: python -c 'from issueops.config import settings_table; print(settings_table())'"
    )


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("ISSUEOPS_HOME", str(tmp_path))
    monkeypatch.setenv("ISSUEOPS_ALLOWLIST", "Octocat, hubot")
    monkeypatch.setenv("ISSUEOPS_SERVING", "KServe")
    monkeypatch.setenv("ISSUEOPS_SERVE_URL", "http://serve:8000/")
    settings = Settings.from_env()
    assert settings.home == tmp_path.resolve()
    assert settings.allowlist == frozenset({"octocat", "hubot"})
    assert settings.serving == "kserve"
    assert settings.serve_url == "http://serve:8000"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("ISSUEOPS_SERVING", "local")
    assert Settings.from_env().serving == "local"


def test_an_empty_variable_keeps_the_default():
    settings = Settings.from_env({"ISSUEOPS_LABEL": "", "ISSUEOPS_NAMESPACE": ""})
    assert (settings.label, settings.namespace, settings.namespace_given) == (
        "mlops:train",
        "issueops",
        False,
    )
    assert Settings.from_env({"ISSUEOPS_NAMESPACE": "ml"}).namespace_given


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ISSUEOPS_OPERATOR_METRICS_PORT", "90000"),
        ("ISSUEOPS_MAX_DATASET_MB", "lots"),
        ("ISSUEOPS_CPUS", "x"),
        ("ISSUEOPS_OPERATOR_INTERVAL", "5s"),
        ("ISSUEOPS_REGISTRY_LOCK_WAIT", "2m"),
    ],
)
def test_a_malformed_number_is_named(name, value):
    with pytest.raises(InvalidInput, match=name):
        Settings.from_env({name: value})


def test_secrets_are_masked_once_read():
    from issueops.logs import mask

    Settings.from_env({"ISSUEOPS_SMTP_PASSWORD": "hunter2-very-secret"})
    assert "hunter2-very-secret" not in mask("password hunter2-very-secret")


def test_path_settings_follow_home(tmp_path):
    settings = Settings.from_env({"ISSUEOPS_HOME": str(tmp_path)})
    assert settings.history_repo == tmp_path.resolve() / "history"
    assert settings.data_roots == (Path.cwd().resolve(), tmp_path.resolve())
