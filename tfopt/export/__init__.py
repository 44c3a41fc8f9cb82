"""Keras model -> deployable artefact: calibration data, .tflite (converter or LiteRT Quantizer), ONNX, C arrays."""
