"""The judge component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import judge

__all__ = ["judge"]
