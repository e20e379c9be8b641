"""How every component runs on a cluster: in the image built from Dockerfile.components."""

import functools
import os

from kfp import dsl

COMPONENT_IMAGE = os.environ.get("ISSUEOPS_COMPONENT_IMAGE", "ghcr.io/issueops/issueops-components:0.1.0")

# The image (and the local venv) already hold kfp: installing it again costs every task a pip run.
component = functools.partial(dsl.component, base_image=COMPONENT_IMAGE, install_kfp_package=False)
