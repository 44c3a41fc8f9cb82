"""What a per-layer precision conversion wrote: the record on `ConversionResult.layer_precision` and its summary."""

from __future__ import annotations

from typing import Any

from tfopt.export.precision import LayerPrecisionConfig


def layer_record(content: bytes, precision: dict[str, Any], coverage: Any) -> tuple[dict[str, Any], list[str]]:
    """The JSON-ready record of a `layer_precision` conversion, checked against the flatbuffer and XNNPACK.

    Returns (record, warnings). A layer whose written precision differs from the
    one asked for, or that XNNPACK does not run, gets a warning.
    """
    from tfopt.export.precision_handler import check_layers

    config = precision["config"]
    default = config["default"]
    layers, warnings = check_layers(content, precision["layers"], precision["map"], default, coverage)
    chosen = LayerPrecisionConfig(
        rules=tuple((name, p) for name, p in precision["map"].items() if p != default), default=default
    )
    record = {
        "map": dict(precision["map"]),
        "chosen": chosen.to_dict(),
        "layers": layers,
        "config": config,
        "search": precision.get("search"),
        "pointwise_as_dense": list(precision.get("pointwise_as_dense") or []),
    }
    return record, warnings


def summary_lines(record: dict[str, Any]) -> list[str]:
    """Lines for `ConversionResult.summary()`."""
    layers = record.get("layers") or {}
    counts: dict[str, int] = {}
    for info in layers.values():
        counts[info["written"]] = counts.get(info["written"], 0) + 1
    lines = [f"  layer precision: {counts}" + (" (chosen automatically)" if record.get("search") else "")]
    default = record.get("config", {}).get("default", "int8")
    for name, info in layers.items():
        if info["requested"] == default and info["written"] == default and info["xnnpack"] is not False:
            continue
        flag = "" if info["written"] == info["requested"] else f" (asked {info['requested']})"
        runtime = " not on XNNPACK" if info["xnnpack"] is False else ""
        lines.append(f"    {name}: {info['written']}{flag}{runtime}")
    if record.get("pointwise_as_dense"):
        lines.append(f"  1x1 convolutions written as FULLY_CONNECTED: {len(record['pointwise_as_dense'])}")
    search = record.get("search")
    if search and search.get("final"):
        final, uniform = search["final"], search["uniform"]
        lines.append(
            f"  vs uniform {default}: {final['size_bytes'] / 1024:.1f} KB vs {uniform['size_bytes'] / 1024:.1f} KB, "
            f"drop {final['drop_points']:.2f} vs {uniform['drop_points']:.2f} points on validation data, latency "
            f"{search['latency_ratio']}x"
        )
    return lines
