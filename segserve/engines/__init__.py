"""TensorRT engines for the exported graphs: optimization profiles, the ONNX Runtime policy."""
