"""Export stage: checkpoint -> 10-crop ONNX classifier (and TensorRT engine) in the Triton repository."""
