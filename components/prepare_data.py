"""The prepare_data component: defined in issueops.pipeline.components."""

from issueops.pipeline.components import prepare_data

__all__ = ["prepare_data"]
