"""Namespaced custom resources (KServe's InferenceService, KubeRay's RayJob) through the
kubernetes client: server-side apply by the field manager `issueops`, get and delete, with the
API's refusals turned into issueops errors that say which operator is missing or what was denied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from issueops.errors import ExternalServiceError, InvalidInput, NotFound, Unauthorized, Unavailable

FIELD_MANAGER = "issueops"


def api_client(setting: str):
    """A kubernetes ApiClient from the pod's service account, else from KUBECONFIG; `setting` is
    the issueops setting that asked for the cluster, named when there is none."""
    import os

    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:  # KUBECONFIG as it is now: the client reads it once, when first imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, FileNotFoundError, TypeError):
            raise Unavailable(
                f"No Kubernetes configuration: run in a cluster or set KUBECONFIG ({setting})."
            ) from None
    return client.ApiClient()


@dataclass(frozen=True)
class CustomResource:
    group: str
    version: str
    plural: str
    kind: str
    provider: str  # the operator that installs the resource type, named when the API lacks it

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def apply(self, manifest: dict[str, Any], *, api) -> dict[str, Any]:
        """Server-side apply (PATCH, application/apply-patch+yaml, fieldManager=issueops, force)."""
        meta = manifest["metadata"]
        return self._call(
            api,
            "PATCH",
            meta["namespace"],
            meta["name"],
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=manifest,
        )

    def get(self, namespace: str, name: str, *, api) -> dict[str, Any] | None:
        return self._call(api, "GET", namespace, name, header_params={"Accept": "application/json"})

    def delete(self, namespace: str, name: str, *, api) -> None:
        """Delete it with its dependents (background propagation); gone already is fine."""
        self._call(
            api,
            "DELETE",
            namespace,
            name,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    def _call(self, api, method: str, namespace: str, name: str, **kwargs) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        path = f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}/{name}"
        what = f"{self.kind} {namespace}/{name}"
        try:
            return api.call_api(
                path,
                method,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            detail = _reason(exc)
            if exc.status in (401, 403):
                raise Unauthorized(f"Kubernetes refused to {method} {what}: {detail}") from None
            if exc.status == 404:
                raise NotFound(
                    f"The cluster has no {self.kind} API ({self.api_version}): is {self.provider} installed?"
                ) from None
            # A server-side apply of a field the CRD does not declare is a 500 from a real API
            # server ("failed to create typed patch object"), yet no retry can change it.
            if exc.status in (400, 422) or "field not declared in schema" in detail:
                raise InvalidInput(f"Kubernetes rejected {what}: {detail}") from None
            raise api_failure(f"Kubernetes API error {exc.status} on {what}: {detail}", exc.status) from None
        except HTTPError as exc:
            raise unreachable(exc) from None


def _reason(exc) -> str:
    try:
        return json.loads(exc.body).get("message", "")[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)[:300]


def api_failure(message: str, status: int) -> ExternalServiceError:
    """An API server's refusal: only a 5xx or a 429 may pass if asked again."""
    return ExternalServiceError(message, transient=status >= 500 or status == 429, status=status)


def unreachable(error: Exception) -> ExternalServiceError:
    """No answer from the API server at all (connection refused, TLS, timeout): worth a retry."""
    return ExternalServiceError(f"The Kubernetes API is unreachable: {type(error).__name__}", transient=True)
