"""Cluster mode for the bridge: requests are TrainingRequest resources run by the operator.

The bridge creates one resource per request (labelled with its repository and issue) and turns
authorised operator input into a patch of `spec.operatorInput`, after checking it the way the
operator will, so that a bad comment is answered at once and never reaches the cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from issueops.bridge import messages
from issueops.config import Settings
from issueops.errors import Conflict, ExternalServiceError, InvalidInput, NotFound, Unauthorized
from issueops.lifecycle.crd import GROUP, KIND, PLURAL, VERSION
from issueops.lifecycle.state_machine import OperatorInput, TrainingRequest, apply_input, request_name
from issueops.spec.body import TrainingSpec

REPOSITORY_LABEL = f"{GROUP}/repository"
ISSUE_LABEL = f"{GROUP}/issue"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def replacing(old: Any, new: Any) -> Any:
    """A JSON merge patch that turns `old` into exactly `new` (keys only in `old` become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old if key not in new}
    patch.update({key: replacing(old.get(key), value) for key, value in new.items()})
    return patch


def _label_value(repository: str) -> str:
    return repository.replace("/", ".")[:63].strip(".-_") or "none"


def resource_for(
    spec: TrainingSpec, *, name: str, repository: str | None, issue: int | None, requested_by: str | None
) -> dict[str, Any]:
    """A TrainingRequest manifest for `spec` (fields left at None are left out)."""
    body: dict[str, Any] = {k: v for k, v in spec.to_dict().items() if v is not None}
    labels = {}
    if issue is not None and repository:
        body["issue"] = {"repository": repository, "number": issue}
        labels = {REPOSITORY_LABEL: _label_value(repository), ISSUE_LABEL: str(issue)}
    if requested_by:
        body["requestedBy"] = requested_by
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": labels},
        "spec": body,
    }


class KubernetesBook:
    """Requests as TrainingRequest resources in one namespace."""

    def __init__(self, api, namespace: str):
        self.api, self.namespace = api, namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesBook:
        from kubernetes import client

        from issueops.custom_resources import api_client

        api = client.CustomObjectsApi(api_client("ISSUEOPS_BRIDGE_MODE=cluster"))
        namespace = settings.namespace if settings.namespace_given else None
        if not namespace and SERVICE_ACCOUNT_NAMESPACE.exists():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return cls(api, namespace or "issueops")

    def _call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            detail = f"Kubernetes refused to {what} ({exc.status}): {exc.reason}"
            if exc.status == 404:
                raise NotFound(detail) from exc
            if exc.status == 409:
                raise Conflict(detail) from exc
            if exc.status in (401, 403):
                raise Unauthorized(detail) from exc
            if exc.status in (400, 422):
                raise InvalidInput(detail) from exc
            raise ExternalServiceError(detail, transient=exc.status >= 500, status=exc.status) from exc
        except HTTPError as exc:
            raise ExternalServiceError(
                f"Kubernetes could not be reached to {what}: {exc}", transient=True
            ) from exc

    def _list(self, repository: str, issue: int) -> list[dict[str, Any]]:
        selector = f"{REPOSITORY_LABEL}={_label_value(repository)},{ISSUE_LABEL}={issue}"
        found = self._call(
            "list training requests",
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            label_selector=selector,
        )
        items = [
            item
            for item in found.get("items", [])
            if ((item.get("spec") or {}).get("issue") or {}).get("number") == issue
        ]
        return sorted(
            items, key=lambda i: (i["metadata"].get("creationTimestamp") or "", i["metadata"]["name"])
        )

    def find(self, repository: str, issue: int) -> TrainingRequest | None:
        items = self._list(repository, issue)
        for item in reversed(items):
            try:
                return TrainingRequest.from_resource(item)
            except InvalidInput:
                continue  # edited by hand into something invalid; the operator reports it
        return None

    def check(self, spec: TrainingSpec) -> None:
        """Datasets are checked by the operator's first step, where the object store is."""

    def create(
        self, spec: TrainingSpec, *, repository: str, issue: int, requested_by: str
    ) -> TrainingRequest:
        taken = {i["metadata"]["name"] for i in self._list(repository, issue)}
        generation = 1
        while request_name(repository, issue, generation) in taken:
            generation += 1
        body = resource_for(
            spec,
            name=request_name(repository, issue, generation),
            repository=repository,
            issue=issue,
            requested_by=requested_by,
        )
        created = self._call(
            "create the training request",
            self.api.create_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            body,
        )
        return TrainingRequest.from_resource(created)

    def apply(self, request: TrainingRequest, given: OperatorInput) -> str | None:
        if given.action == "status":
            return messages.status_reply(request)
        if given.id in request.applied_inputs:
            return None
        if given.action in ("retrain", "cancel"):
            apply_input(copy.deepcopy(request), given)  # raises as the operator would
        elif given.action == "approve" and request.phase != "Succeeded":
            raise Conflict(f"Request {request.name} is {request.phase}; nothing to approve yet.")
        elif given.action == "rollback" and request.active:
            raise Conflict(f"Request {request.name} is {request.phase}; `/cancel` it first, or wait.")
        current = self._call(
            "read the training request",
            self.api.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            request.name,
        )
        # A merge patch merges nested maps: earlier input's keys are nulled, not kept.
        previous = (current.get("spec") or {}).get("operatorInput")
        self._call(
            "pass the operator input on",
            self.api.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            request.name,
            {"spec": {"operatorInput": replacing(previous, given.to_dict())}},
        )
        return None

    def tick(self) -> None:
        """Nothing to do: the operator moves requests on a cluster."""
