"""The one exception hierarchy. Each class maps to what the user sees.

`exit_code` is the CLI exit status, `http_status` the answer of an HTTP endpoint; the
message is a short human sentence (or several, in `problems`), never a traceback.
"""

from __future__ import annotations


class IssueOpsError(Exception):
    """Something went wrong that we can explain to the user."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message)

    def __str__(self) -> str:
        return "; ".join(self.problems) if len(self.problems) > 1 else super().__str__()


class InvalidInput(IssueOpsError):
    """The user's input (spec, comment, file, argument) is malformed or out of bounds."""

    exit_code = 2
    http_status = 400


class SpecError(InvalidInput):
    """A training spec failed validation; `problems` lists every reason."""


class DatasetError(InvalidInput):
    """A dataset could not be found, read or used for the requested task."""


class NotFound(IssueOpsError):
    """A named thing (model, version, run, request) does not exist."""

    exit_code = 2
    http_status = 404


class Conflict(IssueOpsError):
    """The request is valid but the current state forbids it (nothing was changed)."""

    exit_code = 2
    http_status = 409


class Unauthorized(IssueOpsError):
    """The caller may not do this (bad signature, missing permission)."""

    exit_code = 2
    http_status = 403


class Unavailable(IssueOpsError):
    """A capability is not present on this machine (TensorRT, a GPU, a server binary)."""

    exit_code = 2
    http_status = 503


class ExternalServiceError(IssueOpsError):
    """A service we depend on (GitHub, S3, MLflow, a webhook) failed or refused."""

    http_status = 502

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
