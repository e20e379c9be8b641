"""The notify component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import notify

__all__ = ["notify"]
