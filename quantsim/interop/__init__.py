"""Other engines: import of TFLite / ONNX Runtime quantized models, ONNX export, engines as oracles."""
