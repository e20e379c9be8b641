"""One attempt of a request, as its own process: `python -m issueops.bridge.attempt --run-id ...`.

Started by the local run backend. Whatever happens, the run record explains it (a problem found
before the pipeline started is written as the run's error) and `<run_id>.exit` marks the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from issueops.config import Settings, utcnow
from issueops.errors import IssueOpsError
from issueops.logs import mask
from issueops.pipeline.runs import RunRecord
from issueops.spec.body import TrainingSpec
from issueops.store import open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m issueops.bridge.attempt")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--spec-file", required=True)
    parser.add_argument("--issue", type=int)
    parser.add_argument("--repository")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    done = settings.home / "attempts" / f"{args.run_id}.exit"
    code = 1
    try:
        from issueops.pipeline.execution import run_local

        spec = TrainingSpec.from_json(Path(args.spec_file).read_text())
        result = run_local(
            spec,
            settings=settings,
            issue=args.issue,
            repository=args.repository,
            attempt=args.attempt,
            run_id=args.run_id,
        )
        print(f"{args.run_id}: {result.decision} — {result.message}")
        code = 0
    except IssueOpsError as exc:
        _record_error(settings, args.run_id, "submit", type(exc).__name__, exc.exit_code, exc.problems)
        code = exc.exit_code
    except Exception as exc:  # a bug: still explained in the record, never a silent death
        _record_error(settings, args.run_id, "submit", type(exc).__name__, 1, [f"{exc}"])
        raise
    finally:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(str(code))
    return code


def _record_error(
    settings: Settings, run_id: str, step: str, kind: str, exit_code: int, problems: list[str]
) -> None:
    record = RunRecord(open_store(settings), run_id)
    if record.error() is None:
        record.write(
            "error.json",
            {
                "step": step,
                "kind": kind,
                "exit_code": exit_code,
                "problems": [mask(str(p)) for p in problems],
                "time": utcnow().isoformat(),
            },
        )
    for problem in problems:
        print(mask(str(problem)), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
