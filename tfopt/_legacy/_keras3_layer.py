"""A tf_keras layer that runs one Keras 3 layer or op, so a Keras 3 model can cross to tf_keras whole.

`to_tf_keras` uses it for what tf_keras cannot rebuild from a config: Keras 3
ops recorded in a functional graph (`x + 3.0` in hard-swish is
`keras.src.ops.numpy.Add`) and custom layers (ConvNeXt's `LayerScale`, user
layers). The wrapper owns tf_keras copies of the inner layer's weights and
calls the inner layer with them through Keras 3's public `stateless_call`, so
gradients reach the tf_keras variables and `fit` trains them. tfmot leaves the
wrapper dense (it is not a prunable layer). Non-trainable state updates of the
inner layer during training (e.g. a custom BatchNorm) are not kept.

The class is registered with tf_keras under `"tfopt>Keras3Layer"`, so a saved
pruned model loads again once `keras3_layer_class()` has run (`load_pruned`
does that).
"""

from __future__ import annotations

from typing import Any

REGISTERED_NAME = "tfopt>Keras3Layer"
_TENSOR = "__tensor__"
_CLASS: list = []


def keras3_layer_class():
    """The tf_keras wrapper class (defined and registered on first use)."""
    if _CLASS:
        return _CLASS[0]
    import keras
    import tensorflow as tf

    from tfopt._legacy import tf_keras_module

    tf_keras = tf_keras_module()

    class _Holder:
        """Keeps the Keras 3 layer out of tf_keras' attribute tracking (its weights are mirrored)."""

        def __init__(self, layer):
            self.layer = layer

    @tf_keras.saving.register_keras_serializable(package="tfopt")
    class Keras3Layer(tf_keras.layers.Layer):
        """Runs a Keras 3 layer or op (given by its Keras 3 serialized config) inside a tf_keras model."""

        def __init__(self, keras3_config: dict, call_args: list | None = None, call_kwargs: dict | None = None, **kwargs):
            super().__init__(**kwargs)
            self.keras3_config = keras3_config
            self.call_args = list(call_args) if call_args is not None else [{_TENSOR: 0}]
            self.call_kwargs = dict(call_kwargs or {})
            self._holder = _Holder(keras.saving.deserialize_keras_object(keras3_config))
            self._mirrors: list = []

        @property
        def inner(self):
            """The Keras 3 layer or op this layer runs."""
            return self._holder.layer

        def build(self, input_shape):
            inner = self.inner
            if isinstance(inner, keras.layers.Layer) and not inner.built:
                shapes = [tuple(s) for s in input_shape] if isinstance(input_shape, list) else tuple(input_shape)
                inner.build(shapes)
            for variable in getattr(inner, "trainable_weights", []) + getattr(inner, "non_trainable_weights", []):
                self._mirrors.append(
                    self.add_weight(
                        name=variable.path.split("/")[-1],
                        shape=tuple(variable.shape),
                        dtype=variable.dtype,
                        trainable=variable.trainable,
                        initializer=tf_keras.initializers.Constant(variable.numpy()),
                    )
                )
            super().build(input_shape)

        def call(self, inputs):
            tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            args = fill_template(self.call_args, tensors)
            kwargs = fill_template(self.call_kwargs, tensors)
            inner = self.inner
            if not self._mirrors:
                return inner(*args, **kwargs)
            count = len(inner.trainable_weights)
            values = [tf.identity(v) for v in self._mirrors]
            outputs, _ = inner.stateless_call(values[:count], values[count:], *args, **kwargs)
            return outputs

        def get_config(self):
            config = super().get_config()
            config.update(keras3_config=self.keras3_config, call_args=self.call_args, call_kwargs=self.call_kwargs)
            return config

    _CLASS.append(Keras3Layer)
    return Keras3Layer


def to_template(args: list, kwargs: dict) -> tuple[list, dict, list]:
    """Splits Keras 3 node arguments into a template (tensors -> placeholders) and the tensor refs, in order."""
    refs: list = []

    def encode(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            refs.append(list(value["config"]["keras_history"]))
            return {_TENSOR: len(refs) - 1, "shape": value["config"].get("shape"), "dtype": value["config"].get("dtype")}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        return value

    return encode(list(args)), encode(dict(kwargs)), refs


def fill_template(template: Any, tensors: list) -> Any:
    """Replaces the placeholders of `to_template` by `tensors`."""
    if isinstance(template, dict):
        if _TENSOR in template:
            return tensors[template[_TENSOR]]
        return {k: fill_template(v, tensors) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_template(v, tensors) for v in template]
    return template


def keras3_node(template_args: list, template_kwargs: dict, refs: list) -> dict:
    """A Keras 3 `{"args", "kwargs"}` node from a template and `[layer, node, tensor]` refs."""
    specs = {}

    def collect(template: Any) -> None:
        if isinstance(template, dict) and _TENSOR in template:
            specs[template[_TENSOR]] = (template.get("shape"), template.get("dtype") or "float32")
        elif isinstance(template, dict):
            for v in template.values():
                collect(v)
        elif isinstance(template, list):
            for v in template:
                collect(v)

    collect(template_args)
    collect(template_kwargs)
    tensors = [
        {
            "class_name": "__keras_tensor__",
            "config": {"shape": specs.get(i, (None,))[0], "dtype": specs.get(i, (None, "float32"))[1], "keras_history": list(r)},
        }
        for i, r in enumerate(refs)
    ]
    return {"args": fill_template(template_args, tensors), "kwargs": fill_template(template_kwargs, tensors)}
