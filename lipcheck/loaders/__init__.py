"""Front ends that lower ONNX and PyTorch models to the graph IR."""
