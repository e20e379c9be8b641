"""The write_history component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import write_history

__all__ = ["write_history"]
