"""Compression: Keras model in, Keras model out, one technique a module."""
