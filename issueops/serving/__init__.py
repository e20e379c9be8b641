"""The local Open Inference Protocol (V2) endpoint: HTTP and gRPC, reached with tritonclient.

`serve()` serves the `production` version of each model from its packaged Triton repository
with ONNX Runtime, batches concurrent requests, and follows the alias without a restart.
"""

from issueops.serving.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, RegistrySource, serve

__all__ = ["DEFAULT_GRPC_PORT", "DEFAULT_HTTP_PORT", "RegistrySource", "serve"]
