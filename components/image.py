"""How every component runs on a cluster: defined in issueops.pipeline.components."""

from issueops.pipeline.components import COMPONENT_IMAGE, component

__all__ = ["COMPONENT_IMAGE", "component"]
