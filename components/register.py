"""The register component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import register

__all__ = ["register"]
