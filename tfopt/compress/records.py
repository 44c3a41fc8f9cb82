"""What a technique did travels on the model it returned, and in the file that model is saved to.

Keras keeps its quantization report on the model; tfopt does the same: the
record of a pruning, clustering or QAT step (the layers it skipped and why, the
layers kept float, the rewrites) is a small JSON string on the first of the
technique's layers in the model (`tfopt_report`). tfopt's Keras 3 layers save it
in their config, so `tfopt.summary` answers the same for a model loaded from a
`.keras` file in another process. (tfmot's tf_keras wrappers carry it in
memory only; a loaded tf_keras model's summary is rebuilt from its layers.)

Plain Python: no Keras import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

KEY = "tfopt_report"


class CarriesRecord:
    """Mixin for tfopt's Keras layers: keeps a `tfopt_report` string and saves it in the layer's config."""

    def __init__(self, *args: Any, tfopt_report: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tfopt_report = tfopt_report

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.tfopt_report:
            config[KEY] = self.tfopt_report
        return config


def attach(layers: Sequence[Any], technique: str, record: dict[str, Any]) -> None:
    """Writes `record` (JSON-ready) for `technique` on the first of `layers` (the technique's layers in a model)."""
    if not layers:
        return
    layer = layers[0]
    text = getattr(layer, KEY, None)
    payload = json.loads(text) if text else {}
    payload[technique] = record
    setattr(layer, KEY, json.dumps(payload, sort_keys=True))


def read(model: Any, technique: str) -> dict[str, Any] | None:
    """The record `technique` left on `model`, or `None` (a model it did not make, or a tf_keras file)."""
    for layer in getattr(model, "layers", ()):
        text = getattr(layer, KEY, None)
        if text:
            payload = json.loads(text)
            if technique in payload:
                return payload[technique]
    return None
