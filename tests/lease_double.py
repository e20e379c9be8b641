"""The Kubernetes API's Lease resource (coordination.k8s.io/v1) on loopback: create, get, update
with optimistic concurrency, in the API server's JSON and Status bodies.

What the registry lock relies on is what this answers as the API server does: a create of an
existing Lease is 409 AlreadyExists, an update whose metadata.resourceVersion is not the current
one is 409 Conflict, every write gets a new resourceVersion, and MicroTime fields must be RFC 3339
with six fractional digits (anything else is a 400).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?/?(?:\?.*)?$")
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


class LeaseApiDouble:
    def __init__(self):
        self.leases: dict[tuple[str, str], dict] = {}
        self.writes: list[tuple[str, str, str | None]] = []  # (verb, name, holderIdentity)
        self.lock = threading.Lock()
        self.version = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def status(self, code: int, reason: str, message: str):
                body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
                self.reply(code, {**body, "message": message, "reason": reason, "code": code})

            def target(self):
                match = LEASES.match(self.path)
                return (match[1], match[2]) if match else (None, None)

            def body(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                lease = json.loads(raw)
                for field in ("acquireTime", "renewTime"):
                    value = (lease.get("spec") or {}).get(field)
                    if value is not None and not MICRO_TIME.match(str(value)):
                        raise ValueError(
                            f'Lease in version "v1" cannot be handled as a Lease: {field} {value!r}'
                        )
                return lease

            def do_GET(self):
                namespace, name = self.target()
                with double.lock:
                    found = double.leases.get((namespace, name)) if name else None
                if found is None:
                    return self.status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                return self.reply(200, found)

            def do_POST(self):
                namespace, name = self.target()
                try:
                    lease = self.body()
                except ValueError as exc:
                    return self.status(400, "BadRequest", str(exc))
                if namespace is None or name is not None:
                    return self.status(404, "NotFound", "the server could not find the requested resource")
                name = lease["metadata"]["name"]
                with double.lock:
                    if (namespace, name) in double.leases:
                        return self.status(
                            409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'
                        )
                    stored = double._store(namespace, name, lease, "create")
                return self.reply(201, stored)

            def do_PUT(self):
                namespace, name = self.target()
                try:
                    lease = self.body()
                except ValueError as exc:
                    return self.status(400, "BadRequest", str(exc))
                with double.lock:
                    current = double.leases.get((namespace, name)) if name else None
                    if current is None:
                        return self.status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                    given = lease["metadata"].get("resourceVersion")
                    if given is not None and given != current["metadata"]["resourceVersion"]:
                        return self.status(
                            409,
                            "Conflict",
                            f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object '
                            "has been modified; please apply your changes to the latest version and try again",
                        )
                    stored = double._store(namespace, name, lease, "update", current)
                return self.reply(200, stored)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _store(self, namespace: str, name: str, lease: dict, verb: str, current: dict | None = None) -> dict:
        self.version += 1
        metadata = {
            **(current or {}).get("metadata", {}),
            **lease["metadata"],
            "namespace": namespace,
            "name": name,
            "resourceVersion": str(self.version),
        }
        metadata.setdefault("uid", f"lease-{self.version}")
        metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        spec = {k: v for k, v in (lease.get("spec") or {}).items() if v is not None}
        stored = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        self.leases[(namespace, name)] = stored
        self.writes.append((verb, name, spec.get("holderIdentity")))
        return stored

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that points the kubernetes client at this server."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "double", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "t"}}],
                    "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}],
                    "current-context": "double",
                }
            )
        )
        return path

    def client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.CoordinationV1Api(client.ApiClient(configuration))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
