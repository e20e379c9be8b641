"""The one place where a command's outcome becomes its exit status and what stderr says.

An IssueOpsError is its sentences on stderr and its kind's exit code (issueops.errors.ANSWERS);
a reader that went away (`issueops ... | head`) ends quietly with 141, as SIGPIPE would; Ctrl-C
is 130; a bug of ours is one line, its traceback only with ISSUEOPS_DEBUG set.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

from issueops.config import Settings
from issueops.errors import IssueOpsError
from issueops.logs import configure_logging, mask

P = ParamSpec("P")

EXIT_SIGPIPE = 128 + signal.SIGPIPE
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_INTERNAL_ERROR = IssueOpsError.answer.exit_code


def answered(command: Callable[P, int]) -> Callable[P, int]:
    """`command` (a subcommand's handler) returning its exit status whatever happens in it."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = command(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away shows here, inside this handler
            return code
        except BrokenPipeError:
            # stdout goes to /dev/null so that the interpreter's last flush does not complain once more.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_SIGPIPE
        except IssueOpsError as exc:
            for problem in exc.problems:
                print(mask(str(problem)), file=sys.stderr)
            return exc.outcome().exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:  # a bug of ours: one line for the user, the traceback only on request
            if _debugging():
                raise
            print(
                f"internal error: {mask(f'{type(exc).__name__}: {exc}')} (set ISSUEOPS_DEBUG=1 for details)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL_ERROR

    return run


def logged(args: argparse.Namespace) -> int:
    """The command `args` names, with logging as the settings ask; run it inside `answered`, so a
    bad setting is a sentence on stderr, not a traceback."""
    settings = Settings.from_env()
    configure_logging(
        settings.log_level or "WARNING", json_lines=settings.log_json, service=f"issueops-{args.command}"
    )
    return args.handler(args)


def _debugging() -> bool:
    """ISSUEOPS_DEBUG; False when the settings themselves are bad (that is said elsewhere)."""
    try:
        return Settings.from_env().debug
    except IssueOpsError:
        return False
