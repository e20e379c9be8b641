"""`issueops mcp`: the MCP server (issueops.mcp_server) over stdio, or Streamable HTTP when asked."""

from __future__ import annotations

import argparse
import ipaddress

from issueops.errors import InvalidInput

DEFAULT_HTTP_PORT = 8090  # beside `issueops serve` (8000, 8001) and `issueops bridge serve` (8080)


def add_mcp_parser(subparsers) -> argparse.ArgumentParser:
    """Add `mcp` to the `issueops` subcommands."""
    mcp = subparsers.add_parser("mcp", help="serve the issueops tools to MCP clients (stdio by default)")
    mcp.add_argument(
        "--transport",
        choices=("stdio", "streamable-http"),
        default="stdio",
        help="stdio (default: the client starts this command) or streamable-http (a long-running server)",
    )
    mcp.add_argument("--host", default="127.0.0.1", help="streamable-http: address (default: 127.0.0.1)")
    mcp.add_argument(
        "--port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"streamable-http: port (default: {DEFAULT_HTTP_PORT})",
    )
    mcp.set_defaults(handler=cmd_mcp)
    return mcp


def cmd_mcp(args) -> int:
    from issueops.mcp_server import server

    if args.transport == "stdio":
        server.run("stdio")
        return 0
    from issueops.serving.server import check_port_free

    if not _is_loopback(args.host):
        raise InvalidInput(
            f"The MCP server has no authentication of its own, so it listens on loopback only "
            f"(127.0.0.1, ::1, localhost), not {args.host}; reach it from elsewhere through an SSH "
            "tunnel or an authenticating proxy."
        )
    check_port_free(args.host, args.port, "HTTP")
    server.run("streamable-http", host=args.host, port=args.port)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
