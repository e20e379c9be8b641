"""The one error mapping: every kind says what each door answers, and every door reads it."""

import ast
import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path

import kopf
import pytest

from issueops import errors
from issueops.cli import main
from issueops.cli.exits import answered
from issueops.cli.serving import main as serving_main
from issueops.errors import ANSWERS, Answer, ExternalServiceError, IssueOpsError, SpecError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "issueops"


def _modules_defining_errors() -> set[str]:
    """Every issueops module with a class that extends one of ours, read from the source (importing
    the whole package would load torch, Ray and MLflow): so a new kind cannot hide from the test."""
    ours = {cls.__name__ for cls in ANSWERS}
    found: dict[str, str] = {}
    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    grew = True
    while grew:  # classes that extend classes that extend ours, in any order of the files
        grew = False
        for path, tree in trees.items():
            for node in ast.walk(tree):
                bases = {
                    getattr(base, "id", getattr(base, "attr", None)) for base in getattr(node, "bases", [])
                }
                known = ours | set(found)
                if isinstance(node, ast.ClassDef) and node.name not in known and bases & known:
                    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                    found[node.name], grew = module, True
    return set(found.values())


def _all_kinds() -> list[type[IssueOpsError]]:
    for module in _modules_defining_errors():
        importlib.import_module(module)
    kinds, pending = [], [IssueOpsError]
    while pending:
        kind = pending.pop()
        kinds.append(kind)
        pending.extend(kind.__subclasses__())
    return kinds


def test_every_kind_in_errors_py_declares_its_answer_explicitly():
    declared = {
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, IssueOpsError)
        and value.__module__ == errors.__name__
    }
    assert set(ANSWERS) == declared
    for kind, answer in ANSWERS.items():
        assert kind.answer is answer and (kind.exit_code, kind.http_status) == (
            answer.exit_code,
            answer.http_status,
        )


def test_every_error_class_anywhere_is_mapped_for_every_door():
    kinds = _all_kinds()
    assert {"NeverServed", "WindowTooSmall", "NotServable", "StepTimeout", "DeliveryError"} <= {
        k.__name__ for k in kinds
    }
    for kind in kinds:
        answer = kind.answer  # its own, or that of the kind in errors.py it extends
        assert any(answer is declared for declared in ANSWERS.values()), kind
        assert isinstance(answer.exit_code, int) and answer.exit_code > 0, kind
        assert isinstance(answer.http_status, int) and 400 <= answer.http_status < 600, kind
        assert answer.kopf_delay_s is None or answer.kopf_delay_s > 0, kind
        assert "{problems}" in answer.mcp_refusal, kind
        assert isinstance(answer.step_retry, bool), kind
    assert [f.name for f in dataclasses.fields(Answer)] == [
        "exit_code",
        "http_status",
        "kopf_delay_s",
        "mcp_refusal",
        "step_retry",
    ]


def test_the_readme_table_is_the_mapping():
    assert errors.answers_table() in (REPO / "README.md").read_text()


# ---------------------------------------------------------------------- the operator: kopf's outcomes


@pytest.fixture(scope="module")
def operator_module():
    spec = importlib.util.spec_from_file_location(
        "issueops_operator", REPO / "operator" / "issueops_operator.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("kind", list(ANSWERS), ids=lambda kind: kind.__name__)
def test_the_operator_answers_each_kind_as_mapped(operator_module, kind):
    with pytest.raises((kopf.TemporaryError, kopf.PermanentError)) as raised, operator_module.kopf_errors():
        raise kind("The spec is wrong.")
    if kind.answer.kopf_delay_s is None:
        assert type(raised.value) is kopf.PermanentError
    else:
        assert type(raised.value) is kopf.TemporaryError and raised.value.delay == kind.answer.kopf_delay_s
    assert str(raised.value) == "The spec is wrong."


def test_the_operator_retries_a_transient_service_error_after_its_retry_after(operator_module):
    with pytest.raises(kopf.TemporaryError) as raised, operator_module.kopf_errors():
        raise ExternalServiceError("GitHub: rate limited.", transient=True, status=429, retry_after=42)
    assert raised.value.delay == 42
    with pytest.raises(kopf.PermanentError), operator_module.kopf_errors():
        raise ExternalServiceError("GitHub: the token may not comment.", status=403)


# ---------------------------------------------------------------------- the CLI: one handler


@pytest.mark.parametrize("kind", list(ANSWERS), ids=lambda kind: kind.__name__)
def test_the_cli_handler_exits_with_each_kind_s_code_and_its_sentences(kind, capsys):
    @answered
    def command() -> int:
        raise errors.recorded_error([kind.__name__], ["First problem.", "Second problem."])

    assert command() == kind.answer.exit_code
    assert capsys.readouterr() == ("", "First problem.\nSecond problem.\n")


def test_the_cli_handler_on_a_bug_and_on_ctrl_c(capsys, monkeypatch):
    monkeypatch.delenv("ISSUEOPS_DEBUG", raising=False)

    @answered
    def broken() -> int:
        raise KeyError("rows")

    @answered
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert broken() == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: KeyError: 'rows'") and "Traceback" not in err
    assert interrupted() == 130 and capsys.readouterr().err == "interrupted\n"


def test_exit_2_invalid_input(home, tmp_path, capsys):
    body = tmp_path / "issue.yaml"
    body.write_text("learning_type: supervised\nalgorithm: random_forrest\n")
    assert main(["validate", "--spec-only", str(body)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "random_forrest" in err and "Traceback" not in err


def test_exit_2_not_found(home, capsys):
    assert main(["registry", "show", "no-such-model"]) == 2
    assert capsys.readouterr() == ("", "There is no registered model named 'no-such-model'.\n")


def test_a_bad_setting_is_a_sentence_for_every_command(home, monkeypatch, capsys):
    monkeypatch.setenv("ISSUEOPS_CPUS", "x")  # once read while the parser was built: a traceback
    assert main(["algorithms"]) == 2
    assert capsys.readouterr() == ("", "ISSUEOPS_CPUS must be a whole number, got 'x'.\n")
    assert serving_main(["package", "some-model"]) == 2  # `python -m issueops.cli.serving` alike
    assert capsys.readouterr() == ("", "ISSUEOPS_CPUS must be a whole number, got 'x'.\n")


def test_exit_1_a_service_that_does_not_answer(home, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["registry", "list"]) == 1
    out, err = capsys.readouterr()
    assert (
        out == ""
        and err.startswith("MLflow: Could not list the registered models")
        and "Traceback" not in err
    )


# ---------------------------------------------------------------------- MCP and steps


def test_an_mcp_refusal_is_the_sentences_one_a_line():
    error = SpecError("two problems", problems=["algorithm is unknown.", "target is missing."])
    assert error.refusal() == "algorithm is unknown.\ntarget is missing."


def test_a_recorded_error_comes_back_as_its_kind_with_its_sentences():
    rebuilt = errors.recorded_error(
        ["DeliveryError", "ExternalServiceError", "IssueOpsError"], ["Slack said 500."]
    )
    assert isinstance(rebuilt, ExternalServiceError) and rebuilt.problems == ["Slack said 500."]
    assert rebuilt.outcome() is ExternalServiceError.answer  # not transient: nothing says it was
