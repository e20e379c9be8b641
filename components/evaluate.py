"""The evaluate component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import evaluate

__all__ = ["evaluate"]
