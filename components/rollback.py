"""The rollback component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import rollback

__all__ = ["rollback"]
