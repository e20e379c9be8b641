"""The deploy component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import deploy

__all__ = ["deploy"]
