"""Keras 2 (tf_keras) support: the only place in tfopt that imports tf_keras and tfmot.

Everything else reaches tf_keras through `tf_keras_module()` and tfmot through
`import_tfmot()`, both lazy, so `import tfopt` never loads either and never
changes which Keras `tf.keras` resolves to.
"""

from __future__ import annotations

import contextlib
import os


def tf_keras_module():
    """The `tf_keras` module (Keras 2), imported on first use; without it, an error naming `tfopt[legacy]`."""
    from tfopt import _extras

    return _extras.require("tf_keras", "Keras 2 (tf_keras) models")


@contextlib.contextmanager
def _restore_env(name: str):
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def import_tfmot():
    """Imports tensorflow_model_optimization without leaking its global side effects.

    tfmot sets `TF_USE_LEGACY_KERAS=1` when imported, which would make a later
    first touch of `tf.keras` resolve to Keras 2. tfopt restores the variable.
    """
    import tensorflow as tf

    # Resolve tf.keras now, under the user's own setting, so the variable tfmot sets
    # while it imports cannot flip it to Keras 2 (tfmot itself then picks tf_keras).
    getattr(tf.keras, "Model", None)
    from tfopt import _extras

    with _restore_env("TF_USE_LEGACY_KERAS"):
        return _extras.require("tensorflow_model_optimization", "tfmot, which prunes, clusters and trains tf_keras models")
