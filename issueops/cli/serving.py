"""`issueops package` and `issueops serve`: a registered version becomes a Triton repository and
the production version of each model an Open Inference Protocol (V2) endpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from issueops.cli.exits import answered, logged


def add_serving_parser(subparsers) -> None:
    """Add `package` and `serve` to the `issueops` subcommands."""
    package = subparsers.add_parser(
        "package", help="export a registered version to ONNX (parity-checked) and write its Triton repository"
    )
    package.add_argument("model", help="registered model name")
    package.add_argument("--version", help="version number (default: the production version)")
    package.add_argument("--repo", type=Path, help="local model repository (default: $ISSUEOPS_HOME/triton)")
    package.add_argument("--json", action="store_true", help="print the result as JSON")
    package.set_defaults(handler=cmd_package)

    serve = subparsers.add_parser("serve", help="serve production models over V2 HTTP and gRPC")
    serve.add_argument(
        "--model", help="serve only this model (default: every model with a production version)"
    )
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="HTTP processes sharing the port, one per free core (default: 1; gRPC is served by the first)",
    )
    serve.add_argument(
        "--max-request-mb",
        type=int,
        default=8,
        help="largest request body, HTTP and gRPC, in MiB (default: 8, kserve's gRPC limit)",
    )
    serve.set_defaults(handler=cmd_serve)


def cmd_package(args) -> int:
    from issueops.packaging.package import package_model

    result = package_model(args.model, args.version, repo=args.repo)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    parity = result.export["parity"]
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in parity["max_abs_diff"].items())
    labels = " labels identical," if parity.get("labels_identical") else ""
    tensors = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in result.export["inputs"])
    print(f"packaged   {result.model} version {result.version} (run {result.run_id})")
    print(f"parity     {parity['rows']} test rows,{labels} max difference {diffs}")
    print(f"inputs     {tensors}")
    print(f"repository {result.repository}")
    for target, uri in result.targets.items():
        print(f"{target + ' repo':<10} {uri}")
    return 0


def cmd_serve(args) -> int:
    from issueops.serving.server import serve

    serve(
        args.model,
        port=args.port,
        grpc_port=args.grpc_port,
        host=args.host,
        workers=args.workers,
        max_request_mb=args.max_request_mb,
        ready=lambda line: print(line, flush=True),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m issueops.cli.serving package|serve ...`: the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="issueops")
    add_serving_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return answered(logged)(args)


if __name__ == "__main__":
    sys.exit(main())
