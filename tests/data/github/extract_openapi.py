"""Trim GitHub's OpenAPI description to the responses the test double must match.

The full description is 13 MB; tests/data/github/openapi-responses.json keeps only the
response schemas of the endpoints issueops calls, and the component schemas they use.
Refresh it with:

    .venv/bin/python -m tests.octokit     # make setup does it: .cache/octokit/ (tests/octokit.py)
    .venv/bin/python tests/data/github/extract_openapi.py \\
        .cache/octokit/openapi-23.0.2/package/generated/api.github.com.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
EXTRACT = HERE / "openapi-responses.json"
REPO = "/repos/{owner}/{repo}"
# (method, documented path, status) for every answer of the double that issueops reads.
RESPONSES = [
    ("GET", "/rate_limit", "200"),
    ("GET", REPO, "200"),
    ("GET", f"{REPO}/issues", "200"),
    ("POST", f"{REPO}/issues", "201"),
    ("GET", f"{REPO}/issues/{{issue_number}}", "200"),
    ("GET", f"{REPO}/issues/{{issue_number}}", "404"),
    ("GET", f"{REPO}/issues/{{issue_number}}/comments", "200"),
    ("POST", f"{REPO}/issues/{{issue_number}}/comments", "201"),
    ("GET", f"{REPO}/issues/comments/{{comment_id}}", "200"),
    ("PATCH", f"{REPO}/issues/comments/{{comment_id}}", "200"),
    ("PATCH", f"{REPO}/issues/comments/{{comment_id}}", "422"),
    ("GET", f"{REPO}/issues/{{issue_number}}/labels", "200"),
    ("POST", f"{REPO}/issues/{{issue_number}}/labels", "200"),
    ("GET", f"{REPO}/collaborators/{{username}}/permission", "200"),
    ("GET", f"{REPO}/contents/{{path}}", "200"),
    ("GET", f"{REPO}/contents/{{path}}", "404"),
    ("PUT", f"{REPO}/contents/{{path}}", "200"),
    ("PUT", f"{REPO}/contents/{{path}}", "201"),
    ("PUT", f"{REPO}/contents/{{path}}", "409"),
    ("PUT", f"{REPO}/contents/{{path}}", "422"),
    ("GET", f"{REPO}/commits/{{ref}}", "200"),
    ("GET", f"{REPO}/branches/{{branch}}", "200"),
    ("GET", f"{REPO}/git/ref/{{ref}}", "200"),
    ("POST", f"{REPO}/git/refs", "201"),
    ("PATCH", f"{REPO}/git/refs/{{ref}}", "200"),
    ("PATCH", f"{REPO}/git/refs/{{ref}}", "422"),
    ("GET", f"{REPO}/git/commits/{{commit_sha}}", "200"),
    ("POST", f"{REPO}/git/commits", "201"),
    ("POST", f"{REPO}/git/blobs", "201"),
    ("POST", f"{REPO}/git/trees", "201"),
]
_DROP = {"example", "examples", "description", "title", "discriminator"}


def _strip(node: Any) -> Any:
    """Drop documentation-only keys (not inside `properties`, where keys are field names)."""
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _strip(schema) for name, schema in value.items()}
        elif key not in _DROP and not key.startswith("x-"):
            out[key] = _strip(value)
    return out


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        _, *parts = node["$ref"].split("/")
        node = spec
        for part in parts:
            node = node[part]
    return node


def _schema_refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _schema_refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _schema_refs(value, found)


def extract(spec: dict) -> dict:
    """{responses: {"METHOD path status": schema}, components: {schemas: the ones used}}."""
    responses = {}
    for method, path, status in RESPONSES:
        response = _resolve(spec, spec["paths"][path][method.lower()]["responses"][status])
        content = response["content"]
        media = content.get("application/json") or next(iter(content.values()))
        responses[f"{method} {path} {status}"] = _strip(media["schema"])
    schemas = spec["components"]["schemas"]
    needed: set[str] = set()
    todo = set()
    _schema_refs(responses, todo)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            _schema_refs(schemas[name], todo)
    return {
        "source": f"@octokit/openapi {spec['info']['version']}, generated/api.github.com.json",
        "responses": responses,
        "components": {"schemas": {name: _strip(schemas[name]) for name in sorted(needed)}},
    }


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema 2020-12: `nullable: true` becomes an allowed null.

    `oneOf` becomes `anyOf`: GitHub's alternatives overlap (basic-error and
    repository-rule-violation-error accept the same body) and lean on a discriminator.
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(schema) for name, schema in value.items()}
        elif key == "oneOf":
            out["anyOf"] = to_json_schema(value)
        elif key != "nullable":
            out[key] = to_json_schema(value)
    if node.get("nullable") is True:
        if "type" in out and not any(k in out for k in ("$ref", "anyOf", "allOf")):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "api.github.com.json")
    data = extract(json.loads(source.read_text()))
    EXTRACT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{EXTRACT}: {EXTRACT.stat().st_size // 1024} KB, {len(data['responses'])} responses")
