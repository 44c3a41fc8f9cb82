"""`tfopt.apply`'s handler for a `PTQConfig`: the recipe's last step, a .tflite from `tfopt.convert`."""

from __future__ import annotations

from typing import Any

from tfopt.export.calibration import calibration_data
from tfopt.export.convert import convert


def handle(model: Any, config: Any, context: Any):
    """Converts `model` with the config's options.

    Calibration for `int8` / `int16x8` is the context's, else drawn from the
    recipe's training inputs; `float_fallback="auto"` measures on the
    context's validation data when there is some.
    """
    calibration = None
    if config.mode in ("int8", "int16x8"):  # the modes that calibrate
        calibration = context.calibration
        if calibration is None and context.x is not None:
            calibration = calibration_data(context.x, model=model)
    auto: dict[str, Any] = {}
    if config.float_fallback == "auto" or config.layer_precision == "auto":
        auto = {"validation": context.validation, "max_accuracy_drop": config.max_accuracy_drop}  # points
    if config.layer_precision is not None:
        auto["layer_precision"] = config.layer_precision
        if config.max_size_kb is not None:
            auto["max_size_kb"] = config.max_size_kb
    return convert(
        model, mode=config.mode, engine=config.engine, calibration=calibration, float_fallback=config.float_fallback,
        per_channel_dense=config.per_channel_dense, input_type=config.input_type, output_type=config.output_type,
        **auto,
    )
