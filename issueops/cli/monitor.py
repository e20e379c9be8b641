"""`issueops monitor ...`: drift, delayed labels and performance of served versions, the retraining
triggers of every production model, and the receiver of KServe's payload logger.

Each action is a few lines over issueops.monitoring; the registry is only read (which version is in
production, what it was registered with). `--json` prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from issueops.cli.exits import answered
from issueops.errors import InvalidInput
from issueops.logs import mask

RECEIVER_PORT = 8080


def add_monitor_parser(subparsers) -> argparse.ArgumentParser:
    """Add `monitor` and its actions to the `issueops` subcommands."""
    from issueops.monitoring.drift import MIN_ROWS
    from issueops.monitoring.performance import MIN_LABELLED_ROWS
    from issueops.monitoring.reports import DRIFT_WINDOW, PERFORMANCE_WINDOW

    monitor = subparsers.add_parser("monitor", help="drift, delayed labels and performance of served models")
    actions = monitor.add_subparsers(dest="monitor_command", required=True, metavar="ACTION")

    def window(parser: argparse.ArgumentParser, default: str) -> None:
        parser.add_argument("model")
        parser.add_argument("--version", type=int, help="registered version (default: the production one)")
        parser.add_argument(
            "--since",
            default=default,
            help=f"start of the window: a duration (30m, 24h, 7d) or an ISO time (default: {default})",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    drift = actions.add_parser("drift", help="per-feature and prediction drift against the reference profile")
    window(drift, DRIFT_WINDOW)
    drift.add_argument(
        "--min-rows", type=int, default=MIN_ROWS, help=f"smallest window to test (default {MIN_ROWS})"
    )
    drift.add_argument("--plots", metavar="DIR", help="write reference-vs-current plots into DIR")
    drift.add_argument(
        "--no-correction",
        action="store_true",
        help="judge p-values one by one (Evidently's way) instead of adjusting them across features",
    )

    feedback = actions.add_parser(
        "feedback", help="store delayed labels (CSV or JSON lines keyed by request_id)"
    )
    feedback.add_argument("model")
    feedback.add_argument("file", help="CSV with request_id,label[,row] or JSON lines with those keys")
    feedback.add_argument("--json", action="store_true", help="print JSON")

    performance = actions.add_parser(
        "performance", help="the registered metric on labelled traffic (or a CBPE estimate without labels)"
    )
    window(performance, PERFORMANCE_WINDOW)
    performance.add_argument(
        "--tolerance", type=float, default=0.0, help="how much worse than registered still counts as fine"
    )
    performance.add_argument(
        "--min-labelled",
        type=int,
        default=MIN_LABELLED_ROWS,
        help=f"labelled rows needed to measure (default {MIN_LABELLED_ROWS})",
    )
    _add_check_parser(actions)
    serve = actions.add_parser(
        "serve", help="receive KServe payload-logger CloudEvents and write them to the payload logs"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=RECEIVER_PORT, help=f"port (default {RECEIVER_PORT})")
    monitor.set_defaults(handler=run_monitor_command)
    return monitor


def _add_check_parser(actions) -> None:
    from issueops.monitoring.triggers import TriggerPolicy, duration

    default = TriggerPolicy()
    check = actions.add_parser(
        "check",
        help="evaluate every production model's retraining triggers (drift, performance, schedule)",
    )
    check.add_argument(
        "--open-issues",
        action="store_true",
        help="act: open one retraining proposal per model and trigger (a GitHub issue, or a file in the "
        "store without GitHub), remind and resolve; without it the verdicts are only printed",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--model", action="append", help="check only this model (repeatable)")

    options = [  # flag, type, default, what
        ("--drift-window", _duration_arg, default.drift_window, "length of a drift window, aligned to UTC"),
        ("--drift-windows", int, default.drift_windows, "consecutive drifting windows that fire the trigger"),
        ("--min-rows", int, default.min_rows, "rows a window needs"),
        (
            "--performance-window",
            _duration_arg,
            default.performance_window,
            "traffic the performance trigger judges",
        ),
        ("--tolerance", float, default.tolerance, "how much worse than registered the metric may get"),
        ("--min-labelled", int, default.min_labelled, "labelled rows needed to measure"),
        ("--cooldown", _duration_arg, default.cooldown, "quiet time after a version goes to production"),
        ("--remind-every", _duration_arg, default.remind_every, "at most one 'still firing' comment per"),
    ]
    for flag, kind, value, what in options:
        said = duration(value) if isinstance(value, timedelta) else f"{value:g}"
        check.add_argument(flag, type=kind, default=value, help=f"{what} (default {said})")


def _duration_arg(text: str) -> timedelta:
    from issueops.monitoring.reports import parse_duration

    try:
        return parse_duration(text)
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(str(error).rstrip(".")) from None


@answered
def run_monitor_command(args: argparse.Namespace, *, registry=None, store=None) -> int:
    """Run one `monitor` action; errors are a short sentence on stderr and their exit code."""
    if store is None or registry is None:
        from issueops.config import Settings
        from issueops.store import open_store

        settings = Settings.from_env()
        store = store or open_store(settings)
        if registry is None:
            from issueops.registry.lifecycle import Registry

            registry = Registry.from_settings(settings)
    if args.monitor_command == "serve":
        return _serve(args, store)
    data, text, *code = _ACTIONS[args.monitor_command](args, registry, store)
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return code[0] if code else 0


def _drift(args, registry, store):
    from issueops.monitoring.drift import Correction
    from issueops.monitoring.reports import drift_report

    report = drift_report(
        registry,
        store,
        args.model,
        version=args.version,
        since=args.since,
        min_rows=args.min_rows,
        correction=Correction.NONE if args.no_correction else Correction.BENJAMINI_HOCHBERG,
        plots_dir=Path(args.plots) if args.plots else None,
    )
    return report.to_dict(), _drift_text(report)


def _drift_text(report) -> str:
    rows = [report.summary(), ""]
    rows.append(
        f"{'FEATURE':<28} {'TEST':<14} {'STATISTIC':>10} {'P / ADJ. P / DISTANCE':>24} {'THRESH.':>8}  DRIFT"
    )
    for item in [*report.features, *([report.prediction] if report.prediction else [])]:
        if item.p_value is not None:
            evidence = f"{item.p_value:.3g} / {item.p_adjusted:.3g}"
        else:
            evidence = "-" if item.distance is None else f"{item.distance:.4g}"
        statistic = "-" if item.statistic is None else f"{item.statistic:.4g}"
        rows.append(
            f"{item.name[:28]:<28} {item.test or '-':<14} {statistic:>10} {evidence:>24} {item.threshold:>8g}  "
            + ("yes" if item.drift else "no")
            + (f"  ({item.note})" if item.note else "")
        )
    skipped = report.log.get("skipped_files", 0), report.log.get("skipped_lines", 0)
    rows.append("")
    rows.append(
        f"window {report.since or 'the first log'} .. {report.until}: {report.rows} rows, reference {report.reference_rows} rows; "
        f"p-values {'adjusted (Benjamini-Hochberg)' if report.correction != 'none' else 'not adjusted'}"
        + (f"; {skipped[0]} damaged file(s) and {skipped[1]} bad line(s) skipped" if any(skipped) else "")
    )
    if report.plots:
        rows.append(f"plots  {Path(report.plots[0]).parent} ({len(report.plots)})")
    return "\n".join(rows)


def _feedback(args, registry, store):
    from issueops.monitoring.inference_log import NeverServed, logged_versions, read_inference_log
    from issueops.monitoring.payloads import payload_prefix
    from issueops.monitoring.performance import known_request_ids, record_feedback
    from issueops.monitoring.profile import load_reference_profile

    path = Path(args.file)
    if not path.is_file():
        raise InvalidInput(f"{args.file}: no such file.")
    versions = logged_versions(store, args.model)
    if not versions:
        raise NeverServed(
            f"Model {args.model} has never been served: no inference logs under {payload_prefix(args.model)}/."
        )
    production = registry.production(args.model)
    # Labels are checked against the classes of the version in production (else the latest served).
    version = production.version if production and production.version in versions else versions[-1]
    profile = load_reference_profile(store, args.model, version)
    log = read_inference_log(store, args.model)
    result = record_feedback(
        store,
        args.model,
        path.read_bytes(),
        name=path.name,
        task_type=profile.task_type,
        classes=profile.classes,
        known_request_ids=known_request_ids(log),
    )
    return result.to_dict(), result.summary() + f"\nstored {result.key}"


def _performance(args, registry, store):
    from issueops.monitoring.reports import performance_report

    report = performance_report(
        registry,
        store,
        args.model,
        version=args.version,
        since=args.since,
        tolerance=args.tolerance,
        min_labelled=args.min_labelled,
    )
    return report.to_dict(), report.summary()


def _check(args, registry, store):
    """`check`: the triggers; exit 1 when GitHub failed (the proposals are in the store then)."""
    from issueops.config import Settings
    from issueops.github import configured_client
    from issueops.monitoring.triggers import TriggerPolicy, check_triggers
    from issueops.reporting.history import history_branch

    policy = TriggerPolicy(
        drift_window=args.drift_window,
        drift_windows=max(1, args.drift_windows),
        min_rows=args.min_rows,
        performance_window=args.performance_window,
        tolerance=args.tolerance,
        min_labelled=args.min_labelled,
        cooldown=args.cooldown,
        remind_every=args.remind_every,
    )
    github = configured_client(Settings.from_env()) if args.open_issues else None
    report = check_triggers(
        store,
        registry,
        policy=policy,
        github=github,
        act=args.open_issues,
        branch=history_branch(),
        models=args.model,
    )
    for error in report.errors:
        print(mask(error), file=sys.stderr)
    return report.to_dict(), _check_text(report), 1 if report.errors else 0


def _check_text(report) -> str:
    from issueops.monitoring.triggers import Action

    if not report.models:
        return "No model is in production: there is nothing to check."
    rows = []
    for model in report.models:
        rows.append(f"{model.model} version {model.version} (in production since {model.production_since})")
        rows += [f"  note: {note}" for note in model.notes]
        for trigger in model.triggers:
            rows.append(f"  {trigger.kind:<12} {'FIRING' if trigger.firing else 'ok':<7} {trigger.summary}")
            issue = f"issue #{trigger.issue}" + (f" {trigger.issue_url}" if trigger.issue_url else "")
            said = {
                Action.OPENED: f"opened {issue}",
                Action.COMMENTED: f"commented on {issue}",
                Action.RESOLVED: f"resolved: said on {issue}"
                if trigger.issue and not trigger.proposal
                else f"resolved: noted beside {trigger.proposal}",
                Action.STORED: f"proposal written to the store: {trigger.proposal}",
                Action.WOULD_OPEN: "would open a retraining proposal (run with --open-issues)",
                Action.FAILED: f"not done: {trigger.error}",
            }.get(trigger.action)
            if said is None and trigger.firing and (trigger.issue or trigger.proposal):
                said = f"still firing: {issue if trigger.issue else trigger.proposal}"
            if said:
                rows.append(f"  {'':<12} {'':<7} -> {said}")
        for body in model.proposals:
            rows += ["", "-" * 72, body.rstrip(), "-" * 72]
    return "\n".join(rows)


def _serve(args, store) -> int:
    """`serve`: the receiver until SIGTERM or SIGINT; what is queued is written before it exits."""
    import signal
    import threading

    from issueops.bridge.webhook import HttpServer
    from issueops.monitoring.payload_logger import PayloadLogger
    from issueops.monitoring.receiver import make_receiver_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logger = PayloadLogger(store, source="issueops-monitor-serve")
    server = HttpServer(make_receiver_app(logger), args.host, args.port).start()
    print(f"receiving payload-logger CloudEvents on {server.url}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        stop.wait()
    finally:
        server.stop()
        logger.close()
    stats = logger.stats
    print(
        f"logged {stats.logged} batch(es) of events, dropped {stats.dropped}, failed {stats.failed}",
        file=sys.stderr,
    )
    return 0


_ACTIONS = {"drift": _drift, "feedback": _feedback, "performance": _performance, "check": _check}
