"""What `tfopt.qat` did, as plain records: the layers fake-quantized, those kept float (and why), the rewrites.

Shared by the Keras 3 path (`qat_native`) and the entry point (`qat`); imports no Keras.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class FloatLayer:
    """A layer trained without fake-quantization, and why."""

    name: str
    class_name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class QATSummary:
    """What `qat` did: the layers with fake-quant, those left float (with reasons), the rewrites."""

    flavor: str
    quantized: tuple[str, ...]
    kept_float: tuple[FloatLayer, ...]
    rewrites: tuple[str, ...]
    preserve: str | None = None
    uninitialized_ranges: int = 0

    def summary(self) -> str:
        """A readable report."""
        lines = [f"QAT ({self.flavor}): {len(self.quantized)} layers fake-quantized, {len(self.kept_float)} kept float"
                 + (f", preserving {self.preserve}" if self.preserve else "")]
        if self.uninitialized_ranges:
            lines.append(f"  {self.uninitialized_ranges} activation range(s) not set yet: train at least one batch")
        lines.extend(f"  rewrite: {r}" for r in self.rewrites)
        lines.extend(f"  float: {f.name} ({f.class_name}): {f.reason}" for f in self.kept_float)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)
