"""The tf_keras (Keras 2) twin of `tfopt.compress.distill.Distiller`.

The training logic is flavour-independent and lives in `tfopt.compress.distill`
(`_DistillerBase`); this module only mixes it into a `tf_keras.Model`, because
it is the one place allowed to import tf_keras.
"""

from __future__ import annotations

from tfopt._legacy import tf_keras_module

_CLASSES: dict = {}


def tf_keras_distiller_class(base: type, doc: str | None = None) -> type:
    """A `tf_keras.Model` subclass that mixes in `base` (the Distiller body), created once per base."""
    if base in _CLASSES:
        return _CLASSES[base]
    tf_keras = tf_keras_module()

    class TFKerasDistiller(base, tf_keras.Model):
        __doc__ = doc

        def __init__(self, student, teacher, *, temperature=4.0, alpha=0.1, feature_layers=None,
                     feature_weight=1.0, teacher_outputs="logits", student_outputs="logits",
                     name="distiller", **kwargs):
            super().__init__(name=name, **kwargs)
            self._setup(student, teacher, temperature, alpha, feature_layers, feature_weight,
                        (teacher_outputs, student_outputs))
            self.loss_tracker = tf_keras.metrics.Mean(name="loss")

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            # tf_keras reports no loss when compiled without one, and passes no `training` flag.
            loss = super().compute_loss(x, y, y_pred, sample_weight, training=self._training_call)
            self.loss_tracker.update_state(loss)
            return loss

    _CLASSES[base] = TFKerasDistiller
    return TFKerasDistiller
