"""The one exception hierarchy, and what each class means to the user at every door.

Each class declares one `Answer`: the CLI exit code, the HTTP status, the kopf outcome
(temporary with a delay, or permanent), the MCP refusal, and whether a pipeline step that raised
it may be retried. The doors (issueops.cli, the bridge, the operator, the MCP server, the step
guard) read the answer; none decides from an exit code. The message is a short human sentence
(or several, in `problems`), never a traceback. README's "Errors" table lists the mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

KOPF_RETRY_DELAY_S = 30.0
"""How long the operator waits before it handles a resource again after a temporary error."""


@dataclass(frozen=True)
class Answer:
    """What the user sees when an error of one kind reaches a door."""

    exit_code: int
    """The `issueops` command's exit status (and a step process's)."""
    http_status: int
    """The status of an HTTP reply (the bridge)."""
    kopf_delay_s: float | None
    """The operator's outcome: seconds before kopf retries (kopf.TemporaryError), None for
    kopf.PermanentError (the handler is not called again for this change)."""
    mcp_refusal: str
    """The MCP tool's error result, `{problems}` being the sentences one per line."""
    step_retry: bool
    """Whether a pipeline step that raised it may run again (KFP's retry policy, the local runner)."""

    @property
    def kopf_outcome(self) -> str:
        return "permanent" if self.kopf_delay_s is None else "temporary"


class IssueOpsError(Exception):
    """Something went wrong that we can explain to the user."""

    # Set from ANSWERS (the end of this module); a subclass elsewhere inherits its parent's.
    answer: ClassVar[Answer]
    exit_code: ClassVar[int]
    http_status: ClassVar[int]

    def __init__(self, message: str, *, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message)

    def __str__(self) -> str:
        return "; ".join(self.problems) if len(self.problems) > 1 else super().__str__()

    def outcome(self) -> Answer:
        """This error's answer (its class's, unless the instance knows better)."""
        return self.answer

    def refusal(self) -> str:
        """The text of an MCP error result for this error."""
        return self.outcome().mcp_refusal.format(problems="\n".join(self.problems))


class InvalidInput(IssueOpsError):
    """The user's input (spec, comment, file, argument) is malformed or out of bounds."""


class SpecError(InvalidInput):
    """A training spec failed validation; `problems` lists every reason."""


class DatasetError(InvalidInput):
    """A dataset could not be found, read or used for the requested task."""


class NotFound(IssueOpsError):
    """A named thing (model, version, run, request) does not exist."""


class Conflict(IssueOpsError):
    """The request is valid but the current state forbids it (nothing was changed)."""


class Unauthorized(IssueOpsError):
    """The caller may not do this (bad signature, missing permission)."""


class Unavailable(IssueOpsError):
    """A capability is not present on this machine (TensorRT, a GPU, a server binary)."""


class ExternalServiceError(IssueOpsError):
    """A service we depend on (GitHub, S3, MLflow, a webhook) failed or refused."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after

    def outcome(self) -> Answer:
        if self.transient:
            return replace(self.answer, kopf_delay_s=self.retry_after or KOPF_RETRY_DELAY_S)
        return self.answer


# What the user sees, kind by kind (README's "Errors" table shows it; a test keeps them equal).
# A NotFound inside a run may be something a neighbouring step has not finished writing: a step
# retries it, the operator looks again later. ExternalServiceError is permanent for the operator
# when the service's refusal is final (a 4xx); `transient` (a 5xx, a timeout, a rate limit) makes
# it temporary, after the service's Retry-After when it gave one (ExternalServiceError.outcome).
# fmt: off
ANSWERS: dict[type[IssueOpsError], Answer] = {
    #                            exit  HTTP  kopf: retry after s   MCP refusal    step retry
    IssueOpsError:        Answer(1,    500,  KOPF_RETRY_DELAY_S,   "{problems}",  True),
    InvalidInput:         Answer(2,    400,  None,                 "{problems}",  False),
    SpecError:            Answer(2,    400,  None,                 "{problems}",  False),
    DatasetError:         Answer(2,    400,  None,                 "{problems}",  False),
    NotFound:             Answer(2,    404,  KOPF_RETRY_DELAY_S,   "{problems}",  True),
    Conflict:             Answer(2,    409,  KOPF_RETRY_DELAY_S,   "{problems}",  False),
    Unauthorized:         Answer(2,    403,  KOPF_RETRY_DELAY_S,   "{problems}",  False),
    Unavailable:          Answer(2,    503,  KOPF_RETRY_DELAY_S,   "{problems}",  False),
    ExternalServiceError: Answer(1,    502,  None,                 "{problems}",  True),
}
# fmt: on
for _kind, _answer in ANSWERS.items():
    _kind.answer, _kind.exit_code, _kind.http_status = _answer, _answer.exit_code, _answer.http_status


def answers_table() -> str:
    """ANSWERS as the Markdown table README's "Errors" section shows."""
    rows = [
        "| error | CLI exit | HTTP | operator (kopf) | MCP refusal | step retried |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, answer in ANSWERS.items():
        if answer.kopf_delay_s is None:
            kopf = "permanent"
        else:
            kopf = f"temporary, again in {answer.kopf_delay_s:g} s"
        if kind is ExternalServiceError:
            kopf += "; temporary when transient (after Retry-After)"
        refusal = "error result: " + answer.mcp_refusal.replace("{problems}", "the sentences, one a line")
        rows.append(
            f"| `{kind.__name__}` | {answer.exit_code} | {answer.http_status} | {kopf} | {refusal} "
            f"| {'yes' if answer.step_retry else 'no'} |"
        )
    return "\n".join(rows)


def lineage(error: BaseException) -> list[str]:
    """The names of an error's IssueOpsError classes, its own first: what a step records, so that
    a process which never imported the exact class can still rebuild the nearest one."""
    return [cls.__name__ for cls in type(error).__mro__ if issubclass(cls, IssueOpsError)]


def error_kind(names: Sequence[str]) -> type[IssueOpsError]:
    """The first loaded IssueOpsError class among `names` (a recorded error's lineage)."""
    loaded: dict[str, type[IssueOpsError]] = {}
    pending: list[type[IssueOpsError]] = [IssueOpsError]
    while pending:
        cls = pending.pop()
        loaded.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return next((loaded[name] for name in names if name in loaded), IssueOpsError)


def recorded_error(names: Sequence[str], problems: list[str]) -> IssueOpsError:
    """An error of the recorded kind with its recorded sentences (a step's error.json, read back)."""
    cls = error_kind(names)
    # Subclasses may take other arguments (ExternalServiceError's `transient`): build the
    # instance as the base does, then give it their defaults.
    error = cls.__new__(cls)
    IssueOpsError.__init__(error, problems[0] if problems else cls.__name__, problems=problems or None)
    if isinstance(error, ExternalServiceError):
        error.transient, error.status, error.retry_after = False, None, None
    return error
