"""The `issueops` command. Each subcommand is a few lines over the library.

Exit codes: 0 pass (or success), 3 retrain, 4 fail; an error exits with its kind's code
(issueops.errors.ANSWERS: 2 for input, a missing thing, a conflict; 1 for a failure), 141 when
the reader went away, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from issueops.cli.exits import answered, logged
from issueops.config import Settings
from issueops.errors import InvalidInput
from issueops.results import Decision

EXIT_BY_DECISION = {Decision.PASS: 0, Decision.RETRAIN: 3, Decision.FAIL: 4}
MAX_SPEC_FILE_BYTES = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return answered(logged)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="issueops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check an issue body / spec file")
    validate.add_argument(
        "file", help="issue body: YAML, JSON or markdown with a ```yaml block ('-' for stdin)"
    )
    validate.add_argument("--json", action="store_true", help="print the resolved spec as JSON")
    validate.add_argument("--spec-only", action="store_true", help="skip the dataset / environment checks")
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser("run", help="run the training pipeline on the local runner")
    run.add_argument("file", help="issue body: YAML, JSON or markdown with a ```yaml block ('-' for stdin)")
    run.add_argument("--json", action="store_true", help="print one JSON object with the result")
    run.add_argument("--issue", type=int, help="issue number to record with the run")
    run.add_argument("--attempt", type=int, default=1, help="attempt number (1 = first training)")
    run.set_defaults(handler=cmd_run)

    compile_ = commands.add_parser("compile", help="write the pipeline IR YAML for Kubeflow Pipelines")
    compile_.add_argument(
        "-o", "--output-dir", default="build", help="directory for the YAML (default: build)"
    )
    compile_.set_defaults(handler=cmd_compile)

    algorithms = commands.add_parser("algorithms", help="list algorithms, hyperparameters and metrics")
    algorithms.add_argument("--markdown", action="store_true", help="print the README's table")
    algorithms.set_defaults(handler=cmd_algorithms)

    for add in _extra_commands():
        add(commands)
    return parser


def _extra_commands():
    from issueops.cli.bridge import add_bridge_parser
    from issueops.cli.mcp import add_mcp_parser
    from issueops.cli.monitor import add_monitor_parser
    from issueops.cli.registry import add_registry_parser
    from issueops.cli.serving import add_serving_parser

    return [add_registry_parser, add_serving_parser, add_bridge_parser, add_mcp_parser, add_monitor_parser]


def read_body(path: str) -> str:
    """The text of a spec file, or InvalidInput naming why it cannot be read."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_SPEC_FILE_BYTES + 1)
    else:
        file = Path(path)
        if not file.is_file():
            raise InvalidInput(f"{path}: no such file.")
        if file.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise InvalidInput(f"{path} is {file.stat().st_size // 1024} KiB; a spec file is at most 64 KiB.")
        data = file.read_bytes()
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise InvalidInput("The spec on stdin is over 1 MiB; a spec is at most 64 KiB.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text.") from None


def cmd_validate(args) -> int:
    from issueops.spec.body import parse_issue_body

    check_inputs = None
    if not args.spec_only:
        from issueops.pipeline.execution import preflight
        from issueops.store import open_store

        settings = Settings.from_env()

        def check_inputs(spec) -> None:
            preflight(spec, settings, open_store(settings))

    spec = parse_issue_body(read_body(args.file), check_inputs=check_inputs)
    print(
        spec.to_json()
        if args.json
        else f"valid: {spec.learning_type} {spec.algorithm} ({spec.task_type}), "
        f"metric {spec.evaluation_metric}, threshold {spec.evaluation_threshold}, max_retry {spec.max_retry}"
    )
    return 0


def cmd_run(args) -> int:
    from issueops.pipeline.execution import run_with_status
    from issueops.spec.body import parse_issue_body

    spec = parse_issue_body(read_body(args.file))
    if args.attempt < 1:
        raise InvalidInput("--attempt counts from 1.")
    console = os.fdopen(os.dup(2), "w", buffering=1)

    def progress(step) -> None:
        if not args.json or Settings.from_env().progress:
            took = f" ({step.seconds:.1f} s)" if step.seconds is not None else ""
            print(f"  {step.name:<14} {step.status}{took}", file=console)

    if not args.json:
        print(
            f"issueops: training {spec.algorithm} ({spec.task_type}) on "
            f"{spec.dataset_id or spec.environment}",
            file=console,
        )
    result = run_with_status(spec, issue=args.issue, attempt=args.attempt, progress=progress)
    for warning in result.warnings:
        print(f"warning: {warning}", file=console)
    if args.json:
        print(result.to_json())
    else:
        print(render_summary(result))
    return EXIT_BY_DECISION.get(result.decision, 1)


def render_summary(result) -> str:
    from issueops.results import format_value

    lines = [
        f"run        {result.run_id}",
        f"decision   {result.decision.upper()}: {result.message}",
        f"metric     {result.evaluation_metric} = {result.metric_value}"
        + (f" (threshold {result.threshold:g})" if result.threshold is not None else ""),
        "metrics    "
        + ", ".join(
            f"{k} {format_value(v)}" for k, v in result.metrics.items() if isinstance(v, (int, float))
        ),
    ]
    if result.model_name:
        lines.append(
            f"model      {result.model_name} version {result.model_version} ({result.alias or 'no alias'})"
        )
    if result.endpoint:
        served = f" (serving version {result.served_version})" if result.served_version else ""
        lines.append(f"endpoint   {result.endpoint}{served}")
    if result.history_path:
        lines.append(f"history    {result.history_path}")
    lines.append(f"artifacts  {result.artifacts.get('model')}")
    return "\n".join(lines)


def cmd_algorithms(args) -> int:
    from issueops.spec.catalog import ALGORITHMS
    from issueops.spec.catalog_docs import algorithm_table

    if args.markdown:
        print(algorithm_table())
        return 0
    for algo in ALGORITHMS.values():
        print(
            f"{algo.name:<18} {algo.learning_type:<14} {'/'.join(algo.task_types):<26} "
            f"{', '.join(algo.param_names)}"
        )
    return 0


def cmd_compile(args) -> int:
    from kfp import compiler

    from issueops.pipeline.graph import training_pipeline

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "issueops-training.yaml"
    compiler.Compiler().compile(training_pipeline, str(target))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
