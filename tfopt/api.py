"""Configs in, new model out: `apply` runs a recipe of configs; the verbs are `apply` with one config.

Nothing here implements a technique. Each config class registers its own
(`tfopt.config`): the handler module that runs it, whether it trains, where its
training wrappers are stripped and described. `apply` validates through the
configs, strips wrappers between steps, hands each handler the config and a
small `Context` (data, teacher, calibration), and returns the last step's result.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from tfopt import config as C
from tfopt.errors import InvalidArgumentError, InvalidTypeError, MissingFileError


def _handler(config: C.Config) -> Callable:
    return importlib.import_module(type(config).handler).handle


def _check_configs(configs: Sequence[Any]) -> list[C.Config]:
    if not configs:
        raise InvalidArgumentError(
            "apply() needs at least one config, e.g. tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.8))."
        )
    checked = []
    for i, config in enumerate(configs):
        if isinstance(config, dict):
            config = C.Config.from_dict(config)
        if not isinstance(config, C.Config) or type(config) is C.Config:
            raise InvalidTypeError(
                f"apply() takes tfopt configs ({', '.join(k.__name__ for k in C.CONFIGS.values())}) or their "
                f"to_dict() output. Received at position {i}: {type(config).__name__}."
            )
        checked.append(config)
    for i, config in enumerate(checked[:-1]):
        if config.technique == "ptq":
            raise InvalidArgumentError(
                f"PTQConfig makes a .tflite, so it must be the last step of a recipe; it is step {i + 1} of {len(checked)}."
            )
    return checked


def _intake(data: Any) -> tuple[Any, Any, Any]:
    """`(x, y, validation)` from the forms `data` takes: `(x, y)`, inputs alone, a mapping with
    `x_train` / `y_train` (and `x_val` / `y_val`), an `.npz` path, or a `tf.data.Dataset` of `(x, y)`."""
    if data is None:
        return None, None, None
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        import os

        import numpy as np

        if not os.path.isfile(data):
            raise MissingFileError(f"data={os.fspath(data)!r} is not a file. Expected an .npz with x_train and y_train.")
        with np.load(data, allow_pickle=False) as loaded:
            data = {key: loaded[key] for key in loaded.files}
    if isinstance(data, dict) or hasattr(data, "files"):
        if "x_train" not in data:
            raise InvalidArgumentError(
                f"data as a mapping needs x_train (and y_train to train). Received keys: {sorted(data)}."
            )
        validation = (data["x_val"], data["y_val"]) if "x_val" in data and "y_val" in data else None
        return data["x_train"], data["y_train"] if "y_train" in data else None, validation
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], None
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset of (x, y) batches
        import numpy as np

        batches = list(data.as_numpy_iterator())
        if not batches:
            raise InvalidArgumentError("data is an empty tf.data.Dataset; it must yield (x, y) or x batches.")
        if isinstance(batches[0], tuple) and len(batches[0]) == 2:
            return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), None
        return np.concatenate(batches), None, None
    if hasattr(data, "shape") and hasattr(data, "__len__"):
        return data, None, None
    raise InvalidTypeError(
        "data must be (x, y) arrays, inputs alone, a mapping with x_train and y_train (e.g. np.load('data.npz')), "
        f"an .npz path or a tf.data.Dataset of (x, y). Received: {type(data).__name__}."
    )


def _train_steps(config: C.Config | None, x: Any) -> int:
    """Optimizer steps of a training step on `x` (0 for a step that does not train or has no epochs)."""
    if config is None or not config.trains or x is None or not getattr(config, "epochs", 0):
        return 0
    n = len(x) if hasattr(x, "__len__") else 0
    return config.epochs * -(-n // config.batch_size) if n else 0


def apply(model: Any, *configs: Any, data: Any = None, teacher: Any = None, calibration: Any = None):
    """Runs a recipe: each config's technique, in order, each on the result of the one before.

    `tfopt.apply(model, tfopt.PruneConfig(target_sparsity=0.8))` is
    `tfopt.prune(model, target_sparsity=0.8)`: the verbs are `apply` with one
    config. A recipe chains techniques, with fine-tuning as a step of its own:

    ```python
    recipe = [tfopt.PruneConfig(target_sparsity=0.8), tfopt.FineTuneConfig(epochs=2),
              tfopt.ClusterConfig(num_clusters=16, preserve_sparsity=True), tfopt.FineTuneConfig(epochs=1),
              tfopt.PTQConfig(mode="int8")]
    result = tfopt.apply(model, *recipe, data=(x_train, y_train))   # a ConversionResult
    ```

    Pruning and clustering wrappers stay on through the training steps after
    them (`FineTuneConfig`, `DistillConfig`) and are stripped before any other
    step. A polynomial `PruneConfig` without `end_step` followed by a training
    step reaches its target after two thirds of that step's batches, so the
    rest recovers at full sparsity. The caller's model is never changed. Configs may also be given as their
    `to_dict()` output, so a stored recipe replays as it ran.

    Args:
        model: a Keras 3 or tf_keras model.
        *configs: `PruneConfig`, `ClusterConfig`, `QATConfig`, `ChannelPruneConfig`,
            `LowRankConfig`, `DistillConfig`, `FineTuneConfig`, `PTQConfig` (last
            only), or dicts from their `to_dict()`.
        data: `(x_train, y_train)`, inputs alone, a mapping with `x_train` /
            `y_train` (and optionally `x_val` / `y_val`, used by
            `PTQConfig(float_fallback="auto")`), an `.npz` path, or a
            `tf.data.Dataset` of `(x, y)` batches; used to fine-tune, distill,
            calibrate int8 conversion, re-estimate BatchNorm after clustering
            and rank channels. Defaults to `None`.
        teacher: the teacher for `DistillConfig`. Defaults to `None`: the model
            given to `apply`, as it was before any step.
        calibration: calibration data for a `PTQConfig` (anything
            `tfopt.calibration_data` accepts). Defaults to `None`: drawn from `data`.

    Returns:
        The last step's result: a Keras model for most steps, a
        `ChannelPruneResult` when a recipe is one `ChannelPruneConfig`, a
        `Distiller` for a `DistillConfig` without data, or a `ConversionResult`
        for `PTQConfig`.

    Raises:
        InvalidTypeError: something other than a config.
        InvalidArgumentError: an empty recipe, `PTQConfig` before the end, or a
            training step without data.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> small = tfopt.apply(model, tfopt.LowRankConfig(rank=4, include="a"))
    >>> small.count_params() < model.count_params()
    True
    """
    steps = _check_configs(configs)
    x, y, validation = _intake(data)
    for config in steps:
        if config.needs_data() and (x is None or y is None):
            raise InvalidArgumentError(
                f"{type(config).__name__} trains the model, so apply() needs data=(x_train, y_train). "
                f"Received: data={'None' if data is None else 'inputs without labels'}."
            )
    teacher = model if teacher is None else teacher
    current, result = model, model
    for i, config in enumerate(steps):
        if config.trains and current is model:
            from tfopt import _keras

            current = _keras.clone_model(model)  # training steps train in place: never the caller's model
        elif i > 0 and not config.trains:
            current = strip_for_next_step(current)
        following = steps[i + 1] if i + 1 < len(steps) else None
        context = C.Context(
            x=x, y=y, validation=validation, teacher=teacher, calibration=calibration,
            train_steps_after=_train_steps(following, x), last=following is None,
        )
        result = _handler(config)(current, config, context)
        current = getattr(result, config.result_model) if config.result_model else result
    return result


def _registered_wrappers() -> list[C.Wrappers]:
    """Each technique's `Wrappers`, the latest in a recipe's usual order first (it describes the model)."""
    return list(dict.fromkeys(k.wrappers for k in reversed(C.CONFIGS.values()) if k.wrappers is not None))


def _wrappers_on(model: Any) -> list[C.Wrappers]:
    """The `Wrappers` whose training wrappers `model` carries."""
    return [w for w in _registered_wrappers() if importlib.import_module(w.module).has_wrappers(model)]


def strip_for_next_step(model: Any):
    """The model without the training wrappers a next step cannot take (pruning, clustering).

    Wrappers that convert as they are (QAT: they carry the quantization
    ranges) stay; a model without wrappers is returned as it is. `apply` calls
    this between steps; `tfopt.search` before it converts.
    """
    if any(not w.convert_wrapped for w in _wrappers_on(model)):
        return strip(model)
    return model


def strip(model: Any, *, batchnorm_data: Any = None):
    """Removes tfopt's training wrappers (pruning, clustering, QAT): a plain Keras model again.

    Use it after fine-tuning a model from `tfopt.prune`, `tfopt.cluster` or
    `tfopt.qat` (or one loaded with `tfopt.load_model`), before saving it for
    deployment or converting it. Zeros (pruning) and shared values (clustering)
    are written into the kernels; a model pruned then clustered is stripped of
    both. The result keeps the Keras flavour of the model given, and is not
    compiled. QAT models convert to int8 as they are; strip them only to get a
    float model back.

    Args:
        model: a model carrying tfopt wrappers. Not modified.
        batchnorm_data: inputs used to re-estimate BatchNorm statistics after
            stripping clustering. Defaults to `None` (statistics kept).

    Returns:
        A new Keras model without wrappers.

    Raises:
        InvalidArgumentError: the model carries no tfopt wrappers.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> layers = [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    >>> pruned = tfopt.prune(keras.Sequential(layers), target_sparsity=0.5, include=["hidden"])
    >>> plain = tfopt.strip(pruned)
    >>> [layer.name for layer in plain.layers]
    ['hidden', 'out']
    """
    found = _wrappers_on(model)
    if not found:
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} carries no pruning, clustering or QAT wrappers, so there is "
            "nothing to strip. Pass the model returned by tfopt.prune, tfopt.cluster or tfopt.qat."
        )
    stripped = getattr(importlib.import_module(found[0].module), found[0].strip)(model, batchnorm_data=batchnorm_data)
    return strip(stripped, batchnorm_data=batchnorm_data) if _wrappers_on(stripped) else stripped


def summary(model: Any):
    """What tfopt's wrappers in a model are doing: sparsity, clusters, or quantized layers, per layer.

    Args:
        model: a model from `tfopt.prune`, `tfopt.cluster` or `tfopt.qat`.

    Returns:
        A `PruningSummary`, `ClusteringSummary` or `QATSummary` (each with
        `summary()` for a table and `to_dict()`).

    Raises:
        InvalidArgumentError: the model carries no tfopt wrappers.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4)])
    >>> [layer.name for layer in tfopt.summary(tfopt.prune(model, include=["hidden"])).layers]
    ['hidden']
    """
    found = _wrappers_on(model)
    if not found:
        raise InvalidArgumentError(
            f"Model {getattr(model, 'name', model)!r} carries no tfopt wrappers; summary() describes models from "
            "tfopt.prune, tfopt.cluster or tfopt.qat. For parameters, MACs and memory use tfopt.profile."
        )
    return getattr(importlib.import_module(found[0].module), found[0].summary)(model)


def load_model(path: Any, *, safe_mode: bool = True, custom_objects: dict[str, Any] | None = None):
    """Loads a Keras model file (.keras, .h5 or a SavedModel folder; Keras 3 or tf_keras), with tfopt's wrappers.

    Loading is safe by default: the file's configuration is read as plain data
    before any Keras deserializer runs, and a file that would run code when
    loaded (a Lambda layer, a stored lambda, a class from a module that is not
    Keras, tfopt or a class you pass) is refused, with the layer named. The
    flavour comes from the file, so a tf_keras `.keras` file loads with tf_keras.
    A SavedModel folder loads only through its Keras metadata; `tfopt.convert`
    converts any SavedModel folder directly, running no Python from it.

    Args:
        path: a `.keras` or `.h5` file, or a SavedModel folder saved by Keras.
        safe_mode: refuse files that would run code. Pass `False` only for files
            you trust. Defaults to `True`.
        custom_objects: your own layer classes by name; they count as safe.
            Defaults to `None`.

    Returns:
        The model, in the Keras flavour that saved it, not compiled.

    Raises:
        MissingFileError: no such file.
        InvalidArgumentError: not a Keras model file.
        UnsafeModelError: the file would run code and `safe_mode` is on.

    Example:

    >>> import keras, os, tempfile, tfopt
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    >>> tfopt.load_model(path).output_shape
    (None, 2)
    """
    from tfopt import _keras

    objects = dict(custom_objects or {})
    if _keras.read_model_file(path).flavor == _keras.TF_KERAS:
        from tfopt._legacy.objects import tfmot_custom_objects

        objects = {**tfmot_custom_objects(), **objects}  # pruned / clustered / QAT tf_keras files
    return _keras.load_model(path, safe_mode=safe_mode, custom_objects=objects or None)


# The verbs: `apply` with one config. Each returns exactly what `apply(model, Config(...))` returns.


def prune(
    model: Any,
    *,
    target_sparsity: float | dict[str, float] = 0.8,
    schedule: str = "polynomial",
    begin_step: int = 0,
    end_step: int | None = None,
    frequency: int | None = None,
    include: Any = None,
    exclude: Any = None,
    m_by_n: tuple[int, int] | None = None,
):
    """Magnitude pruning: wraps the selected layers so a plain `model.fit` prunes them to `target_sparsity`.

    `tfopt.apply(model, tfopt.PruneConfig(...))` with keywords; the options are
    described in `PruneConfig` and `tfopt.compress.prune.prune`. Fine-tune the
    returned model with your own optimizer and callbacks (no callback is
    needed), then `tfopt.strip` it.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, warnings, tfopt
    >>> warnings.simplefilter("ignore")
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4)])
    >>> pruned = tfopt.prune(model, target_sparsity=0.5, include=["hidden"])
    >>> [layer.name for layer in tfopt.summary(pruned).layers]
    ['hidden']
    """
    options = dict(locals())
    return apply(options.pop("model"), C.PruneConfig(**options))


def cluster(
    model: Any,
    *,
    num_clusters: int = 16,
    init: str = "kmeans++",
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    include: Any = None,
    exclude: Any = None,
    data: Any = None,
    batchnorm_data: Any = None,
):
    """Weight clustering: each selected kernel shares `num_clusters` trainable values.

    `tfopt.apply(model, tfopt.ClusterConfig(...), data=data)`; the options are
    described in `ClusterConfig` and `tfopt.compress.cluster.cluster`. `data`
    (inputs, or any form `apply` takes) re-estimates BatchNorm statistics;
    `batchnorm_data` is its earlier spelling. Fine-tune, then `tfopt.strip`.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, numpy as np, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, name="hidden"), keras.layers.Dense(4)])
    >>> plain = tfopt.strip(tfopt.cluster(model, num_clusters=4, include=["hidden"]))
    >>> len(np.unique(plain.get_layer("hidden").get_weights()[0])) <= 4
    True
    """
    options = dict(locals())
    model, data, old = options.pop("model"), options.pop("data"), options.pop("batchnorm_data")
    if old is not None:
        import warnings

        warnings.warn("tfopt.cluster(batchnorm_data=...) is deprecated; use data=...", DeprecationWarning, stacklevel=2)
        data = old if data is None else data
    return apply(model, C.ClusterConfig(**options), data=data)


def qat(
    model: Any,
    *,
    exclude: Any = None,
    preserve: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    ema_decay: float = 0.99,
):
    """Quantization-aware training: fake-quant wrappers that learn int8 ranges under a plain `model.fit`.

    `tfopt.apply(model, tfopt.QATConfig(...))`. Fine-tune the returned model,
    then `tfopt.convert(qat_model, mode="int8", ...)`. Layers that cannot be
    quantized stay float and are listed by `tfopt.summary`.

    Returns:
        A new Keras model (the caller's is not changed) in the flavour given.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    >>> quantized = tfopt.qat(model)
    >>> quantized is model
    False
    """
    options = dict(locals())
    return apply(options.pop("model"), C.QATConfig(**options))


def prune_channels(
    model: Any,
    *,
    ratio: float = 0.5,
    importance: str = "l1",
    data: Any = None,
    include: Any = None,
    exclude: Any = None,
    round_to: int = 1,
    min_channels: int = 1,
):
    """Structured pruning: removes whole channels and returns a smaller dense model.

    `tfopt.apply(model, tfopt.ChannelPruneConfig(...), data=data)`; see
    `ChannelPruneConfig` and `tfopt.compress.channels.prune_channels`.

    Returns:
        A `ChannelPruneResult`: `.model` is the smaller model; `summary()` lists
        the channels kept per layer.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> tfopt.prune_channels(model, ratio=0.5).model.count_params() < model.count_params()
    True
    """
    options = dict(locals())
    model, data = options.pop("model"), options.pop("data")
    return apply(model, C.ChannelPruneConfig(**options), data=data)


def decompose(
    model: Any,
    *,
    rank: int | None = None,
    energy: float | None = None,
    param_ratio: float | None = None,
    include: Any = None,
    exclude: Any = None,
):
    """Low-rank factorisation: splits Dense / Conv2D kernels into two thinner layers by truncated SVD.

    `tfopt.apply(model, tfopt.LowRankConfig(...))`; give at most one of `rank`,
    `energy` and `param_ratio` (see `LowRankConfig`).

    Returns:
        A new Keras model; fine-tune it to recover accuracy.

    Example:

    >>> import keras, tfopt
    >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"), keras.layers.Dense(4)])
    >>> tfopt.decompose(model, rank=4, include="a").count_params() < model.count_params()
    True
    """
    options = dict(locals())
    return apply(options.pop("model"), C.LowRankConfig(**options))


def distill(
    student: Any,
    teacher: Any,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
    feature_layers: Any = None,
    feature_weight: float = 1.0,
    teacher_outputs: str = "auto",
    student_outputs: str = "auto",
    epochs: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    data: Any = None,
):
    """Knowledge distillation: a Keras model that trains `student` to match a frozen `teacher`.

    `tfopt.apply(student, tfopt.DistillConfig(...), teacher=teacher, data=data)`.
    Without `epochs`, compile and fit the returned `Distiller` like any Keras
    model; `.student` is the trained student. With `epochs` and `data`
    (`(x, y)` or any form `apply` takes), the training runs here.

    Returns:
        A `Distiller` (a Keras model), or the trained student with `epochs`.

    Example:

    >>> import keras, tfopt
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(4)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> distiller = tfopt.distill(student, teacher, temperature=4.0)
    >>> distiller.student is not None
    True
    """
    options = dict(locals())
    student, teacher, data = options.pop("student"), options.pop("teacher"), options.pop("data")
    return apply(student, C.DistillConfig(**options), teacher=teacher, data=data)
