"""Which precisions LiteRT writes and runs per op type, found by test on a model: the facts `layer_precision` rests on.

`runtime_support(model, calibration=...)` converts the model once per
(op type, precision): that op type's layers at the precision, everything else
int8. For each it records the precision written in the flatbuffer, whether
XNNPACK runs those ops, and the latency with and without XNNPACK (1 thread).
Besides the per-layer precisions of `layer_precision`, it tries the LiteRT
Quantizer's dynamic (int4 weights, activations quantized at run time,
channelwise and in blocks of 32) and weight-only int4 configurations on each
op type; precisions LiteRT Quantizer refuses for an op are reported as such.
`bench/bench_precision.py` runs it and writes the table the docs quote.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

from tfopt import _keras
from tfopt.analyze.flatbuffer import inspect_tflite
from tfopt.errors import InvalidArgumentError
from tfopt.export import _litert

OP_TYPES = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Per-layer precisions (int8 activations around them) and whole-model LiteRT Quantizer configurations.
LAYER_PRECISIONS = ("int8", "int4", "int16x8", "float16", "float32")
OTHER_CONFIGS = ("dynamic_int4", "dynamic_int4_block32", "weight_only_int4")


def _other_recipe(kind: str, op_type: str) -> list:
    recipes = _keras.optional_import("litert_quantizer.recipe", "litert-quantizer")
    manager = _keras.optional_import("litert_quantizer.recipe_manager", "litert-quantizer").RecipeManager()
    op = getattr(recipes.TFLOperationName, op_type)
    if kind == "dynamic_int4":
        manager.add_dynamic_config(".*", op, num_bits=4)
    elif kind == "dynamic_int4_block32":
        manager.add_dynamic_config(".*", op, num_bits=4, granularity=recipes.QuantGranularity.BLOCKWISE_32)
    else:
        manager.add_weight_only_config(".*", op, num_bits=4)
    return manager.get_quantization_recipe()


def _quantize_other(float_content: bytes, kind: str, op_type: str) -> bytes:
    qz = _keras.optional_import("litert_quantizer.quantizer", "litert-quantizer")
    quantizer = qz.Quantizer(bytearray(float_content))
    quantizer.load_quantization_recipe(_other_recipe(kind, op_type))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return bytes(quantizer.quantize(None, enable_progress_report=False).quantized_model)


def runtime_support(
    model: Any,
    *,
    calibration: Any,
    precisions: Sequence[str] = LAYER_PRECISIONS,
    other_configs: Sequence[str] = OTHER_CONFIGS,
    num_runs: int = 30,
) -> list[dict[str, Any]]:
    """One row per (op type, precision): written precision, XNNPACK, latency with and without it.

    Args:
        model: a Keras model holding Conv2D, DepthwiseConv2D and / or Dense layers.
        calibration: calibration data (anything `tfopt.calibration_data` accepts).
        precisions: per-layer precisions to try (int8 activations elsewhere).
            Defaults to all five.
        other_configs: whole-model LiteRT Quantizer configurations to try per op
            type (`"dynamic_int4"`, `"dynamic_int4_block32"`, `"weight_only_int4"`).
            Defaults to all three.
        num_runs: timed runs per latency. Defaults to `30`.

    Returns:
        Rows `{"op", "precision", "written", "xnnpack", "latency_ms_xnnpack",
        "latency_ms_reference", "size_bytes", "error"}`; `written` is `None`
        with an `error` when LiteRT Quantizer refuses the configuration.
    """
    from tfopt.export import _converter
    from tfopt.export.calibration import calibration_data
    from tfopt.export.precision_handler import layer_ops
    from tfopt.measure.benchmark import benchmark, xnnpack_coverage

    calibration = calibration_data(calibration, model=model)
    float_content, keras_model, _ = _converter.run_converter(
        model, mode="float32", calibration=None, input_type="float32", output_type="float32", sparse=False,
        per_channel_dense=True, safe_mode=True,
    )
    layers = layer_ops(keras_model, float_content)
    qsv = None
    rows = []
    for op_type in OP_TYPES:
        regexes = [r for layer in layers for r, t in zip(layer.regexes(), layer.op_types) if t == op_type]
        if not regexes:
            continue
        for precision in (*precisions, *other_configs):
            row: dict[str, Any] = {"op": op_type, "precision": precision, "written": None, "xnnpack": None,
                                   "latency_ms_xnnpack": None, "latency_ms_reference": None, "size_bytes": None,
                                   "error": None}
            try:
                if precision in other_configs:
                    content = _quantize_other(float_content, precision, op_type)
                else:
                    content, qsv = _litert.run_litert_layers(
                        float_content, default="int8", overrides=[(r, precision) for r in regexes],
                        calibration=calibration, qsv=qsv,
                    )
            except (InvalidArgumentError, ValueError) as err:
                row["error"] = str(err).splitlines()[0][:200]
                rows.append(row)
                continue
            inspection = inspect_tflite(content)
            ops = [op for op in inspection.ops if op.subgraph == 0 and op.name == op_type]
            written = sorted({op.precision for op in ops})
            coverage = xnnpack_coverage(content)
            undelegated = set(coverage.undelegated) if coverage is not None else set()
            row.update(
                written="/".join(written),
                xnnpack=all(f"{op.name}#{op.index}" not in undelegated for op in ops) if coverage else None,
                latency_ms_xnnpack=benchmark(content, num_runs=num_runs).latency_ms_median,
                latency_ms_reference=benchmark(content, num_runs=num_runs, use_xnnpack=False).latency_ms_median,
                size_bytes=len(content),
            )
            rows.append(row)
    return rows
