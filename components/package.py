"""The package component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import package

__all__ = ["package"]
