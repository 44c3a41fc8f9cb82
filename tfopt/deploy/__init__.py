"""Deployment: Keras model -> flatbuffer / C array / ONNX, and measurements on the runtime."""
