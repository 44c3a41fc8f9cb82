"""Runs a model and rewritten copies of it on the TFLite Micro interpreter (child process) and judges the copies.

`check_on_micro` sends the plain model and its `variants` (compressed, re-planned) to
`tfopt.measure._micro_runner`, which runs them all on the same inputs; a variant must give
outputs bit-identical to the plain model's, or `_require_identical` raises `tfopt.BenchmarkError`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from tfopt.errors import BenchmarkError
from tfopt.measure._isolate import run_child


def check_on_micro(
    content: bytes,
    xs: list[np.ndarray] | None,
    *,
    num_samples: int,
    variants: dict[str, bytes] | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Runs a model (and rewritten `variants` of it) on TFLite Micro in a child process; the raw findings."""
    with tempfile.TemporaryDirectory(prefix="tfopt-micro-") as tmp:
        request = {
            "task": "micro",
            "tflite_path": os.path.join(tmp, "model.tflite"),
            "result_path": os.path.join(tmp, "result.json"),
            "num_samples": num_samples,
            "seed": 0,
            "variants": [],
        }
        with open(request["tflite_path"], "wb") as handle:
            handle.write(content)
        for key, blob in (variants or {}).items():
            path = os.path.join(tmp, f"{key}.tflite")
            with open(path, "wb") as handle:
                handle.write(blob)
            request["variants"].append({"name": key, "path": path})
        if xs is not None:
            request["data_path"] = os.path.join(tmp, "data.npz")
            np.savez(request["data_path"], **{f"x{i}": x for i, x in enumerate(xs)})
        raw, _ = run_child(
            "tfopt.measure._micro_runner", request, tmp, timeout=timeout, runtime="the TFLite Micro interpreter"
        )
    return raw


def _require_identical(found: dict[str, Any] | None, key: str, num_samples: int) -> None:
    what = {"compressed": "compressed", "planned": "re-planned (reordered, offline arena plan)"}.get(key, key)
    if found is None:
        raise BenchmarkError(f"the {what} model was not checked on TFLite Micro; nothing was written.")
    if found.get("issues"):
        reasons = "; ".join(f"{i['op'] or 'model'}: {i['reason']}" for i in found["issues"])
        raise BenchmarkError(
            f"TFLite Micro cannot run the {what} model although it runs the plain one ({reasons}); nothing was written. "
            "Pass compress=False / plan_memory=False (--nocompress / --noplan_memory) to write the plain model, "
            "and report this model to tfopt."
        )
    if found.get("mismatched_samples"):
        raise BenchmarkError(
            f"the {what} model's outputs differ from the plain model's on TFLite Micro: "
            f"{found['mismatched_samples']} of {found.get('num_samples', num_samples)} inputs, up to "
            f"{found['max_abs_diff']:g} steps. Expected bit-identical outputs; nothing was written. Pass "
            "compress=False / plan_memory=False (--nocompress / --noplan_memory) to write the plain model, "
            "and report this model to tfopt."
        )
