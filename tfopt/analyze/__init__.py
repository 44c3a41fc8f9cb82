"""Reads a Keras model or a .tflite flatbuffer and runs nothing: profile, FLOPs, sparsity, op precision."""
