"""The promote component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import promote

__all__ = ["promote"]
