"""build_tensorrt_engine: defined in issueops.pipeline.components."""

from issueops.pipeline.components import (
    GPU_NODE_LABEL,
    GPU_RESOURCE,
    TENSORRT_IMAGE,
    add_gpu_placement,
    build_tensorrt_engine,
)

__all__ = ["GPU_NODE_LABEL", "GPU_RESOURCE", "TENSORRT_IMAGE", "add_gpu_placement", "build_tensorrt_engine"]
