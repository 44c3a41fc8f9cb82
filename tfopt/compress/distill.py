"""Knowledge distillation: train a small student to imitate a trained teacher with `model.fit`.

`distill(student, teacher)` returns a `Distiller`, a `keras.Model` whose `fit`
trains a copy of the student on a mix of the usual hard-label loss and a soft-label
loss against the frozen teacher (Hinton et al., 2015), optionally plus a
feature-matching loss between named intermediate layers (FitNets). The trained
student comes back as `distiller.student`, a plain Keras model.

The same call is the recovery step after compression: the compressed model is the
student and the original model is the teacher.

Loss convention (the one of Hinton et al. and the keras.io example):

    loss = alpha * hard_loss(y, student(x))
         + (1 - alpha) * T**2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))
         + feature_weight * mean(MSE(teacher_feature, projection(student_feature)))

so `alpha=0` is pure distillation and `alpha=1` is ordinary training on labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from tfopt._keras import clone_model, keras_flavor, keras_of
from tfopt.errors import InvalidArgumentError, InvalidTypeError, UnsupportedModelError

OUTPUT_KINDS = ("auto", "logits", "probabilities")

# log(p) of a probability output is floored here (float32 softmax never reaches it in practice).
_PROB_FLOOR = 1e-12


# --------------------------------------------------------------------------- pure math


def soft_targets(logits: Any, temperature: float):
    """Softmax of `logits / temperature` along the last axis (the teacher's soft labels)."""
    return ops.softmax(ops.divide(logits, temperature), axis=-1)


def distillation_loss(teacher_logits: Any, student_logits: Any, temperature: float):
    """Mean over the batch of `T**2 * KL(softmax(t/T) || softmax(s/T))`.

    The `T**2` factor keeps the gradient scale of the soft loss independent of the
    temperature, so `alpha` means the same thing at any `T`. Works on NumPy arrays and
    on tensors (Keras 3 ops).

    Args:
        teacher_logits: array `(batch, classes)` of teacher logits (or log-probabilities).
        student_logits: array of the same shape for the student.
        temperature: softening temperature `T > 0`.

    Returns:
        A scalar.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.5, -1.0]], "float32")
    >>> float(distillation_loss(t, t, 4.0))  # identical distributions
    0.0
    """
    log_t = ops.log_softmax(ops.divide(teacher_logits, temperature), axis=-1)
    log_s = ops.log_softmax(ops.divide(student_logits, temperature), axis=-1)
    kl = ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1)
    return ops.mean(kl) * (temperature**2)


def as_logits(outputs: Any, kind: str):
    """Logits (or log-probabilities, equivalent under softmax) from model outputs of `kind`."""
    if kind == "logits":
        return outputs
    return ops.log(ops.clip(outputs, _PROB_FLOOR, 1.0))


def looks_like_probabilities(outputs: np.ndarray, *, atol: float = 1e-3) -> bool:
    """True when every row is non-negative and sums to 1 (a softmax output)."""
    outputs = np.asarray(outputs, dtype="float64")
    return bool(np.all(outputs >= 0.0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=atol))


# --------------------------------------------------------------------------- checks


def _check_options(temperature: float, alpha: float, feature_weight: float, teacher_outputs: str, student_outputs: str):
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise InvalidArgumentError(f"temperature must be a number > 0 (typically 2-8). Received: temperature={temperature!r}.")
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(
            "alpha is the weight of the hard-label loss and must be in [0, 1] "
            f"(0 = pure distillation, 1 = labels only). Received: alpha={alpha!r}."
        )
    if not isinstance(feature_weight, (int, float)) or feature_weight < 0:
        raise InvalidArgumentError(f"feature_weight must be a number >= 0. Received: feature_weight={feature_weight!r}.")
    for name, value in (("teacher_outputs", teacher_outputs), ("student_outputs", student_outputs)):
        if value not in OUTPUT_KINDS:
            raise InvalidArgumentError(f"{name} must be one of {OUTPUT_KINDS}. Received: {name}={value!r}.")


def _is_name_pair(pair) -> bool:
    return isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)


def _single_output(model, role: str):
    outputs = getattr(model, "outputs", None)
    if not outputs:
        raise UnsupportedModelError(
            f"The {role} model {model.name!r} has no symbolic outputs (a subclassed or unbuilt model). "
            "Build it with the functional API or keras.Sequential starting with keras.Input."
        )
    if len(outputs) != 1:
        raise UnsupportedModelError(
            f"The {role} model {model.name!r} has {len(outputs)} outputs; distillation supports "
            "single-output classifiers. Wrap the model so it returns the class scores only."
        )
    classes = outputs[0].shape[-1]
    if len(outputs[0].shape) < 2 or classes is None or classes < 2:
        raise UnsupportedModelError(
            f"The {role} model {model.name!r} outputs shape {tuple(outputs[0].shape)}; distillation needs "
            "class scores of shape (batch, classes) with classes >= 2. For a binary sigmoid head, use a "
            "2-unit softmax (or logits) head."
        )
    return outputs[0]


def _detect_kind(model, declared: str, role: str) -> str:
    """'logits' or 'probabilities', from the declaration or by probing the model on random inputs."""
    if declared != "auto":
        return declared
    rng = np.random.default_rng(0)
    probes = []
    for tensor in model.inputs:
        shape = [4] + [d if d is not None else 8 for d in tensor.shape[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype))
        probe = rng.normal(size=shape) if np.issubdtype(dtype, np.floating) else np.zeros(shape)
        probes.append(probe.astype(dtype))
    outputs = model(probes[0] if len(probes) == 1 else probes, training=False)
    return "probabilities" if looks_like_probabilities(np.asarray(outputs)) else "logits"


def _feature_graph(model, layer_names: Sequence[str], role: str):
    """A model sharing `model`'s layers that returns [output, *named layer outputs]."""
    features = []
    for name in layer_names:
        try:
            layer = model.get_layer(name)
        except ValueError as err:
            known = [layer.name for layer in model.layers]
            raise InvalidArgumentError(
                f"feature_layers names {role} layer {name!r}, which {model.name!r} does not have. "
                f"Its layers are: {known}."
            ) from err
        features.append(layer.output)
    return keras_of(model).Model(model.inputs, [model.outputs[0], *features], name=f"{model.name}_features")


# --------------------------------------------------------------------------- the model


class _DistillerBase:
    """Flavour-independent body of the Distiller (mixed into keras.Model or tf_keras.Model)."""

    def _setup(self, student, teacher, temperature, alpha, feature_layers, feature_weight, kinds):
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_weight = float(feature_weight)
        self.feature_layers = [tuple(pair) for pair in (feature_layers or [])]
        self.teacher_outputs, self.student_outputs = kinds
        self._hard_loss = None
        self._training_call = False
        self._features = None
        if self.feature_layers:
            self._build_feature_path()

    def _build_feature_path(self):
        teacher_names = [t for t, _ in self.feature_layers]
        student_names = [s for _, s in self.feature_layers]
        teacher_graph = _feature_graph(self.teacher, teacher_names, "teacher")
        student_graph = _feature_graph(self.student, student_names, "student")
        dense = keras_of(self.student).layers.Dense
        projections = []
        pairs = zip(self.feature_layers, teacher_graph.outputs[1:], student_graph.outputs[1:])
        for (t_name, s_name), t_out, s_out in pairs:
            t_shape, s_shape = tuple(t_out.shape), tuple(s_out.shape)
            if len(t_shape) != len(s_shape) or t_shape[1:-1] != s_shape[1:-1]:
                raise InvalidArgumentError(
                    f"feature_layers pair ({t_name!r}, {s_name!r}): teacher output shape {t_shape} and student "
                    f"output shape {s_shape} differ in more than the channel (last) axis. Pick layers with the "
                    "same spatial size; channel widths may differ (a learned 1x1 projection bridges them)."
                )
            if t_shape[-1] == s_shape[-1]:
                projections.append(None)
            else:
                projection = dense(t_shape[-1], use_bias=False, name=f"project_{s_name}_to_{t_name}")
                projection.build(s_shape)
                projections.append(projection)
        self._features = (teacher_graph, student_graph)
        self.projections = [p for p in projections if p is not None]
        self._projection_slots = projections

    # -- Keras hooks ---------------------------------------------------------------------------

    def call(self, inputs, training=None):
        self._training_call = training is True  # read by the tf_keras compute_loss (no `training` argument there)
        if training is not True:
            return self.student(inputs, training=training)
        if self._features is None:
            student_out = self.student(inputs, training=True)
            teacher_out = self.teacher(inputs, training=False)
        else:
            teacher_graph, student_graph = self._features
            student_out, *student_feats = student_graph(inputs, training=True)
            teacher_out, *teacher_feats = teacher_graph(inputs, training=False)
            terms = []
            for project, s_feat, t_feat in zip(self._projection_slots, student_feats, teacher_feats):
                s_feat = project(s_feat) if project is not None else s_feat
                terms.append(ops.mean(ops.square(ops.stop_gradient(t_feat) - s_feat)))
            self.add_loss(self.feature_weight * ops.sum(ops.stack(terms)))
        teacher_logits = ops.stop_gradient(as_logits(teacher_out, self.teacher_outputs))
        student_logits = as_logits(student_out, self.student_outputs)
        soft = distillation_loss(teacher_logits, student_logits, self.temperature)
        self.add_loss((1.0 - self.alpha) * soft)
        return student_out

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Like `Model.compile`; `loss` is the hard-label loss (default: cross-entropy matching the student)."""
        self._hard_loss = loss
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self._hard_loss is not None:
            config = dict(config, loss=keras.saving.serialize_keras_object(self._hard_loss))
        return config

    def compile_from_config(self, config):
        # Defined with get_compile_config so Keras re-compiles a loaded Distiller through our compile().
        super().compile_from_config(config)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        hard = self._hard_loss_value(y, y_pred, sample_weight)
        if not training:
            return hard
        return self.alpha * hard + ops.sum(ops.stack([ops.convert_to_tensor(0.0)] + list(self.losses)))

    def _hard_loss_value(self, y, y_pred, sample_weight):
        loss = self._hard_loss
        if loss is None:
            from_logits = self.student_outputs == "logits"
            one_hot = len(y.shape) == len(y_pred.shape) and y.shape[-1] == y_pred.shape[-1]
            loss = (keras.losses.CategoricalCrossentropy if one_hot else keras.losses.SparseCategoricalCrossentropy)(
                from_logits=from_logits
            )
        elif isinstance(loss, str):
            loss = keras.losses.get(loss)
        return loss(y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "feature_layers": [list(pair) for pair in self.feature_layers],
            "feature_weight": self.feature_weight,
            "teacher_outputs": self.teacher_outputs,
            "student_outputs": self.student_outputs,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="tfopt")
class Distiller(_DistillerBase, keras.Model):
    """A Keras model that trains a student against a frozen teacher. Build it with `distill()`.

    `compile` + `fit` train the student; `predict` / `evaluate` / `__call__` run the
    student only. `distiller.student` is the trained student, a plain Keras model;
    `distiller.teacher` is a frozen copy of the teacher. `evaluate` reports the
    hard-label loss of the student (no distillation terms).

    Example:

    ```python
    distiller = tfopt.distill(student, teacher)      # a Distiller
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=5)
    distiller.save("distiller.keras")                # loads back with keras.models.load_model
    distiller.student.save("student.keras")          # usually all you need
    ```
    """

    def __init__(self, student, teacher, *, temperature=4.0, alpha=0.1, feature_layers=None,
                 feature_weight=1.0, teacher_outputs="logits", student_outputs="logits", name="distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        self._setup(student, teacher, temperature, alpha, feature_layers, feature_weight,
                    (teacher_outputs, student_outputs))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def _tf_keras_distiller_class():
    """The tf_keras twin of Distiller (built in `tfopt._legacy`, the only place that imports tf_keras)."""
    from tfopt._legacy.distill import tf_keras_distiller_class

    return tf_keras_distiller_class(_DistillerBase, Distiller.__doc__)


def distill(
    student,
    teacher,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
    feature_layers: Sequence[tuple[str, str]] | None = None,
    feature_weight: float = 1.0,
    teacher_outputs: str = "auto",
    student_outputs: str = "auto",
):
    """Wraps a student and a teacher into a model whose `fit` distills the teacher into the student.

    Use it to train a small model from a big trained one, or as the recovery step after
    compression (pruning, clustering, low-rank, QAT) with the original model as teacher.
    Both models are copied: your `student` and `teacher` are never changed. The trained
    student is `distiller.student`, a plain Keras model ready for `tfopt.strip`,
    `tfopt.convert` or `save`.

    The training loss is
    `alpha * hard_loss + (1 - alpha) * T**2 * KL(teacher_T || student_T) + feature_weight * feature_mse`,
    where `X_T = softmax(logits / T)`. Evaluation reports the student's hard-label loss.

    Args:
        student: a Keras 3 or tf_keras classifier (functional or Sequential) to train.
        teacher: a trained classifier with the same inputs and number of classes. Its Keras may
            differ from the student's (e.g. a Keras 3 original teaching a tfmot-wrapped tf_keras copy).
        temperature: softening temperature `T`; higher spreads the teacher's probability over
            more classes. Defaults to `4.0`.
        alpha: weight of the hard-label loss; `1 - alpha` weighs the distillation loss.
            Defaults to `0.1`.
        feature_layers: optional list of `(teacher_layer_name, student_layer_name)` pairs whose
            outputs are matched with a mean squared error. Shapes must agree except for the
            channel (last) axis; when widths differ the student feature goes through a learned
            1x1 (Dense on the last axis) projection that is dropped with the distiller. Defaults to `None`.
        feature_weight: weight of the feature loss. Defaults to `1.0`.
        teacher_outputs: `"logits"`, `"probabilities"` (softmax outputs) or `"auto"` (detected by
            running the teacher on random inputs). Defaults to `"auto"`.
        student_outputs: same for the student; it also picks the default hard-label loss
            (cross-entropy `from_logits=True` for logits). Defaults to `"auto"`.

    Returns:
        A `Distiller` (a `keras.Model`; the tf_keras twin for tf_keras models). Call
        `compile(optimizer, metrics=...)` (the `loss` argument, if given, replaces the
        default hard-label cross-entropy) and `fit(x, y)`, then take `distiller.student`.

    Raises:
        ValueError: for out-of-range options, unknown layer names or incompatible shapes.
        TypeError: if a model is not a Keras model, or `feature_layers` is not a list of name pairs.
        NotImplementedError: for subclassed or multi-output models.

    Example:

    ```python
    distiller = tfopt.distill(small_model, big_model, temperature=4.0, alpha=0.1)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=5)
    trained_small = distiller.student
    ```
    """
    _check_options(temperature, alpha, feature_weight, teacher_outputs, student_outputs)
    flavor = keras_flavor(student)
    keras_flavor(teacher)  # a Keras model of either flavour: it only has to run on the student's inputs
    t_out, s_out = _single_output(teacher, "teacher"), _single_output(student, "student")
    if t_out.shape[-1] != s_out.shape[-1]:
        raise InvalidArgumentError(
            f"teacher has {t_out.shape[-1]} classes but student has {s_out.shape[-1]}; "
            "distillation needs the same class axis on both."
        )
    if feature_layers is not None and not all(_is_name_pair(pair) for pair in feature_layers):
        raise InvalidTypeError(
            "feature_layers must be a list of (teacher_layer_name, student_layer_name) string pairs. "
            f"Received: feature_layers={feature_layers!r}."
        )
    kinds = (_detect_kind(teacher, teacher_outputs, "teacher"), _detect_kind(student, student_outputs, "student"))
    student_copy, teacher_copy = clone_model(student), clone_model(teacher)
    klass = Distiller if flavor == "keras3" else _tf_keras_distiller_class()
    return klass(
        student_copy,
        teacher_copy,
        temperature=temperature,
        alpha=alpha,
        feature_layers=feature_layers,
        feature_weight=feature_weight,
        teacher_outputs=kinds[0],
        student_outputs=kinds[1],
    )


def handle(student: Any, config: Any, context: Any):
    """`tfopt.apply`'s handler for a `DistillConfig`.

    With `epochs` and data, trains the student against `context.teacher` and
    returns it; otherwise returns the `Distiller` to compile and fit.
    """
    distiller = distill(
        student, context.teacher, temperature=config.temperature, alpha=config.alpha,
        feature_layers=config.feature_layers, feature_weight=config.feature_weight,
        teacher_outputs=config.teacher_outputs, student_outputs=config.student_outputs,
    )
    if context.x is None or not config.epochs:
        return distiller
    from tfopt.compress.finetune import fit_distiller

    fit_distiller(distiller, (context.x, context.y), epochs=config.epochs, batch_size=config.batch_size,
                  learning_rate=config.learning_rate)
    return distiller.student
