"""The train component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import train

__all__ = ["train"]
