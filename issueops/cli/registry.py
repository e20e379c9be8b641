"""`issueops registry ...`: list, show, approve, archive, reject, roll back and audit models.

Each action is a few lines over issueops.registry.lifecycle.Registry; approve and rollback go through
issueops.registry.promotion, which moves the serving endpoint with production. `--json` prints one
JSON document.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from issueops.cli.exits import answered
from issueops.config import actor


def add_registry_parser(subparsers) -> argparse.ArgumentParser:
    """Add `registry` and its actions to the `issueops` subcommands."""
    registry = subparsers.add_parser("registry", help="list, approve, archive, roll back registered models")
    actions = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    action("list", "registered models with their production version")
    action("show", "every version of a model: status, aliases, metrics").add_argument("model")
    for name, help_ in (
        ("approve", "approve a pending version: it goes to production, the previous one is archived"),
        ("archive", "archive a version that is not in production"),
        ("reject", "reject a version that is not in production"),
    ):
        parser = action(name, help_)
        parser.add_argument("model")
        parser.add_argument("version")
        parser.add_argument("--reason", help="why (kept in the audit trail)")
    rollback = action("rollback", "point production back at the previous (or the named) version")
    rollback.add_argument("model")
    rollback.add_argument("--to", dest="to_version", metavar="VERSION", help="version to roll back to")
    rollback.add_argument("--reason", help="why (kept in the audit trail)")
    action("history", "the audit trail of a model, oldest first").add_argument("model")
    registry.set_defaults(handler=run_registry_command)
    return registry


@answered
def run_registry_command(args: argparse.Namespace, registry=None) -> int:
    """Run one `registry` action; errors are a short sentence on stderr and their exit code."""
    if registry is None:
        from issueops.registry.lifecycle import Registry

        registry = Registry.from_settings()
    data, text = _ACTIONS[args.registry_command](registry, args)
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


def _list(registry, args) -> tuple[Any, str]:
    models = registry.list_models()
    rows = [f"{'MODEL':<40} {'PRODUCTION':>10} {'LATEST':>6} {'VERSIONS':>8}"]
    rows += [f"{m.name:<40} {_v(m.production):>10} {_v(m.latest_version):>6} {m.versions:>8}" for m in models]
    return [m.to_dict() for m in models], "\n".join(rows) if models else "no registered models"


def _show(registry, args) -> tuple[Any, str]:
    info = registry.show(args.model)
    rows = [
        f"{info.name}: production version {_v(info.production)}",
        f"{'VERSION':>7}  {'STATUS':<22} {'ALIASES':<12} {'ISSUE':>5}  {'RUN':<28} METRICS",
    ]
    for v in info.versions:
        metrics = ", ".join(f"{k} {val:.4g}" for k, val in sorted(v.metrics.items()))
        rows.append(
            f"{v.version:>7}  {v.status or '-':<22} {','.join(v.aliases) or '-':<12} "
            f"{_v(v.issue):>5}  {v.run_id or '-':<28} {metrics}"
        )
    return info.to_dict(), "\n".join(rows)


def _change(method: str):
    def handler(registry, args) -> tuple[Any, str]:
        info = getattr(registry, method)(args.model, args.version, actor(), args.reason)
        production = " (production)" if info.in_production else ""
        return info.to_dict(), f"{info.model} version {info.version}: {info.status}{production}"

    return handler


def _approve(registry, args) -> tuple[Any, str]:
    from issueops.config import Settings
    from issueops.registry.promotion import Production

    production = Production(Settings.from_env(), registry=registry)
    done = production.promote(args.model, args.version, actor=actor(), reason=args.reason)
    info = done.version
    marked = " (production)" if info.in_production else ""
    text = f"{info.model} version {info.version}: {info.status}{marked}"
    if done.endpoint:
        text += f"\n{done.endpoint}"
    return {**info.to_dict(), "endpoint": done.endpoint}, text


def _rollback(registry, args) -> tuple[Any, str]:
    from issueops.config import Settings
    from issueops.registry.promotion import Production

    production = Production(Settings.from_env(), registry=registry)
    result = production.roll_back(args.model, args.to_version, actor=actor(), reason=args.reason)
    return result.to_dict(), result.message


def _history(registry, args) -> tuple[Any, str]:
    records = registry.history(args.model)
    rows = []
    for r in records:
        if r.action in ("promote", "rollback"):
            what = f"{_v(r.from_version)} -> {_v(r.to_version)}"
        else:
            what = f"version {_v(r.to_version)}" + (f" {r.status}" if r.status else "")
        rows.append(
            f"{r.time}  {r.action:<8} {what:<28} by {r.actor}"
            + (f", run {r.run_id}" if r.run_id else "")
            + (f": {r.reason}" if r.reason else "")
            + (f" [{r.endpoint}]" if r.endpoint else "")
        )
    return [r.to_dict() for r in records], "\n".join(
        rows
    ) if rows else f"no changes recorded for {args.model}"


def _v(value) -> str:
    return "-" if value is None else str(value)


_ACTIONS = {
    "list": _list,
    "show": _show,
    "approve": _approve,
    "archive": _change("archive"),
    "reject": _change("reject"),
    "rollback": _rollback,
    "history": _history,
}
