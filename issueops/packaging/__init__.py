"""Packaging a registered version: ONNX export, the Triton model repository, TensorRT engines."""
