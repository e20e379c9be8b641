"""The slice of the Kubernetes API that issueops' custom resources use (server-side apply, get,
delete of namespaced objects), on loopback, speaking the API server's JSON and Status bodies."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

OBJECT_PATH = re.compile(r"^/apis/([^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)/([^/?]+)")


class ApiServerDouble:
    """Objects of the kinds in `plurals` ({plural: "group/version"}), keyed by (namespace, name).
    `forced_status` answers every PATCH with that error; `on_apply(key, obj)` sees each applied object."""

    def __init__(
        self,
        plurals: dict[str, str],
        *,
        status: int | None = None,
        on_apply: Callable[[tuple[str, str], dict], None] | None = None,
    ):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.forced_status = status
        self.on_apply = on_apply
        self.lock = threading.Lock()
        self.kinds = {(group_version, plural) for plural, group_version in plurals.items()}
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
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
                self.reply(code, {**body, "message": message, "reason": reason, "code": code})

            def key(self):
                match = OBJECT_PATH.match(self.path)
                return (match[2], match[4]) if match and (match[1], match[3]) in double.kinds else None

            def do_GET(self):
                double.requests.append({"method": "GET", "path": self.path})
                key = self.key()
                with double.lock:
                    found = double.objects.get(key) if key else None
                if found is None:
                    return self.status(404, "NotFound", "not found")
                return self.reply(200, found)

            def do_DELETE(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                double.requests.append({"method": "DELETE", "path": self.path})
                key = self.key()
                with double.lock:
                    gone = double.objects.pop(key, None) if key else None
                if gone is None:
                    return self.status(404, "NotFound", "not found")
                return self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def do_PATCH(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
                double.requests.append(
                    {
                        "method": "PATCH",
                        "path": self.path,
                        "query": query,
                        "content_type": self.headers["Content-Type"],
                    }
                )
                if double.forced_status:
                    return self.status(double.forced_status, "Forbidden", "denied by the double")
                key = self.key()
                if not key:
                    return self.status(404, "NotFound", "the server could not find the requested resource")
                if self.headers["Content-Type"] != "application/apply-patch+yaml":
                    return self.status(415, "UnsupportedMediaType", "not an apply patch")
                if not query.get("fieldManager"):
                    return self.status(422, "Invalid", "fieldManager is required for apply requests")
                applied = yaml.safe_load(body)  # apply-patch+yaml: JSON is YAML
                with double.lock:
                    existed = key in double.objects
                    generation = double.objects[key]["metadata"]["generation"] + 1 if existed else 1
                    applied["metadata"].update(
                        generation=generation,
                        uid="0f0e",
                        resourceVersion=str(generation),
                        managedFields=[{"manager": query["fieldManager"], "operation": "Apply"}],
                    )
                    applied.setdefault("status", double.objects.get(key, {}).get("status", {}))
                    double.objects[key] = applied
                if double.on_apply:
                    double.on_apply(key, applied)
                return self.reply(200 if existed else 201, applied)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def set_status(self, key: tuple[str, str], status: dict) -> None:
        """What a controller writes to the object's status subresource."""
        with self.lock:
            self.objects[key]["status"] = status

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)
