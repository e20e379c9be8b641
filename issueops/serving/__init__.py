"""The local Open Inference Protocol (V2) endpoint: HTTP and gRPC, reached with tritonclient.

`serve()` serves the `production` version of each model from its packaged Triton repository
with ONNX Runtime, batches concurrent requests, and follows the alias without a restart.
"""
