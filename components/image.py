"""The container image every component runs in on a cluster (built from Dockerfile.components)."""

import os

COMPONENT_IMAGE = os.environ.get("ISSUEOPS_COMPONENT_IMAGE", "ghcr.io/issueops/issueops-components:0.1.0")
