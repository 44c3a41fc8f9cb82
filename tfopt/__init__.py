"""tfopt: make Keras models smaller and faster for LiteRT, and prove it on the runtime.

The public API lives here and only here. Names load lazily on first use, so
`import tfopt` is cheap: it imports no TensorFlow or Keras and changes no
environment variable (in particular not which Keras `tf.keras` resolves to).

>>> import tfopt
>>> config = tfopt.PruneConfig(target_sparsity=0.9)
>>> config.to_dict()["technique"]
'prune'
"""

from __future__ import annotations

import importlib
import warnings

from tfopt._version import __version__  # defined in tfopt/_version.py only

# Public name -> module that defines it. tests/test_public_api.py pins this list.
_EXPORTS = {
    # configs in, new model out
    "apply": "tfopt.api",
    "strip": "tfopt.api",
    "summary": "tfopt.api",
    "load_model": "tfopt.api",
    "prune": "tfopt.api",
    "cluster": "tfopt.api",
    "qat": "tfopt.api",
    "prune_channels": "tfopt.api",
    "decompose": "tfopt.api",
    "distill": "tfopt.api",
    "Config": "tfopt.config",
    "PruneConfig": "tfopt.config",
    "ClusterConfig": "tfopt.config",
    "QATConfig": "tfopt.config",
    "ChannelPruneConfig": "tfopt.config",
    "LowRankConfig": "tfopt.config",
    "DistillConfig": "tfopt.config",
    "FineTuneConfig": "tfopt.config",
    "PTQConfig": "tfopt.config",
    "prune_sensitivity": "tfopt.compress.sensitivity",
    "reestimate_batchnorm": "tfopt.compress.batchnorm",
    # export: model -> artefact
    "convert": "tfopt.export.convert",
    "calibration_data": "tfopt.export.calibration",
    "export_onnx": "tfopt.export.onnx_export",
    "export_micro": "tfopt.export.micro",
    # analyze: reads, runs nothing
    "profile": "tfopt.analyze.profile",
    "inspect_tflite": "tfopt.analyze.flatbuffer",
    # measure: runs on the runtime, in a child process
    "evaluate": "tfopt.measure.evaluate",
    "benchmark": "tfopt.measure.benchmark",
    "benchmark_sweep": "tfopt.measure.sweep",
    "compare": "tfopt.measure.parity",
    "delegate_report": "tfopt.measure.delegates",
    # reports
    "compare_variants": "tfopt.report",
    "plot_tradeoffs": "tfopt.report",
    # optimize: the search over all of the above
    "optimize": "tfopt.search",
    "Constraints": "tfopt.search",
    # errors
    "TfoptError": "tfopt.errors",
    "BenchmarkError": "tfopt.errors",
    "UnsupportedModelError": "tfopt.errors",
}

# Names of earlier releases: still reachable, with a warning that names the replacement.
_MOVED = {
    "quantize": ("tfopt.api", "qat", "tfopt.qat (quantization-aware training)"),
    "strip_clustering": ("tfopt.api", "strip", "tfopt.strip"),
    "pruning_summary": ("tfopt.api", "summary", "tfopt.summary"),
    "clustering_summary": ("tfopt.api", "summary", "tfopt.summary"),
    "qat_summary": ("tfopt.api", "summary", "tfopt.summary"),
    "load_pruned": ("tfopt.api", "load_model", "tfopt.load_model"),
    "load_clustered": ("tfopt.api", "load_model", "tfopt.load_model"),
    "load_qat": ("tfopt.api", "load_model", "tfopt.load_model"),
    "quantize_tflite": ("tfopt.export.quantizer", "quantize_tflite", "tfopt.convert(..., engine='litert_quantizer')"),
    "quantize_selective": ("tfopt.export.selective", "quantize_selective", "tfopt.convert(..., float_fallback=...)"),
    "evaluate_tflite": ("tfopt.measure.benchmark", "evaluate_tflite", "tfopt.evaluate"),
    "xnnpack_coverage": ("tfopt.measure.benchmark", "xnnpack_coverage", "tfopt.delegate_report"),
    "tflite_sparsity": ("tfopt.analyze.sparsity", "tflite_sparsity", "tfopt.inspect_tflite"),
    "cluster_report": ("tfopt.analyze.cluster_report", "cluster_report", "tfopt.inspect_tflite"),
    "variant_report": ("tfopt.report", "variant_report", "tfopt.compare_variants"),
    "advise_sparsity": ("tfopt.search.advisor", "advise_sparsity", "tfopt.optimize"),
    "allocate_sparsity": ("tfopt.compress.sensitivity", "allocate_sparsity", "tfopt.prune_sensitivity"),
    "plan_decomposition": ("tfopt.compress.lowrank", "plan_decomposition", "tfopt.decompose"),
    "sparsity_logger": ("tfopt.compress.prune", "sparsity_logger", "tfopt.summary"),
    "CONVERT_MODES": ("tfopt.config", "PTQ_MODES", "tfopt.config.PTQ_MODES"),
    "to_tf_keras": ("tfopt._legacy.bridge", "to_tf_keras", "Keras 3 models (tfopt keeps your flavour)"),
    "to_keras3": ("tfopt._legacy.bridge", "to_keras3", "Keras 3 models (tfopt keeps your flavour)"),
    "write_c_array": ("tfopt.export.micro", "write_c_array", "tfopt.export_micro"),
    "load_dataset": ("tfopt.datasets", "load_dataset", "your own data"),
    "run_demo": ("tfopt.demo", "run_demo", "the `tfopt demo` command"),
}
# Result records users read but never build: importable from their modules, not part of __all__.
_RECORDS = {
    "BenchmarkResult": "tfopt.measure.benchmark",
    "EvaluationResult": "tfopt.measure.evaluate",
    "ConversionResult": "tfopt.export.convert",
    "CalibrationData": "tfopt.export.calibration",
    "TFLiteInspection": "tfopt.analyze.flatbuffer",
    "DelegateCoverage": "tfopt.measure.benchmark",
    "Profile": "tfopt.analyze.profile",
    "LayerProfile": "tfopt.analyze.profile",
    "MicroExportResult": "tfopt.export.micro",
    "UnsupportedOp": "tfopt.export.micro",
    "DelegateReport": "tfopt.measure.delegates",
    "OpDelegation": "tfopt.measure.delegates",
    "SweepResult": "tfopt.measure.sweep",
    "SweepPoint": "tfopt.measure.sweep",
    "ParityResult": "tfopt.measure.parity",
    "OutputParity": "tfopt.measure.parity",
    "LayerParity": "tfopt.measure.parity",
    "SelectiveResult": "tfopt.export.selective",
    "Advice": "tfopt.search.advisor",
    "SparsityRule": "tfopt.search.advisor",
    "TFLiteSparsity": "tfopt.analyze.sparsity",
    "TensorSparsity": "tfopt.analyze.sparsity",
    "PruningSummary": "tfopt.compress.prune",
    "LayerSparsity": "tfopt.compress.prune",
    "SkippedLayer": "tfopt.compress.prune",
    "SensitivityResult": "tfopt.compress.sensitivity",
    "LayerSensitivity": "tfopt.compress.sensitivity",
    "ChannelPruneResult": "tfopt.compress.channels",
    "DecompositionPlan": "tfopt.compress.lowrank",
    "LayerDecomposition": "tfopt.compress.lowrank",
    "ClusteringSummary": "tfopt.compress.cluster",
    "ClusteredLayer": "tfopt.compress.cluster",
    "ClusterReport": "tfopt.analyze.cluster_report",
    "KernelValues": "tfopt.analyze.cluster_report",
    "QATSummary": "tfopt.compress.qat",
    "FloatLayer": "tfopt.compress.qat",
    "Distiller": "tfopt.compress.distill",
    "OnnxExportResult": "tfopt.export.onnx_export",
    "VariantReport": "tfopt.report",
    "Dataset": "tfopt.datasets",
    "DemoResult": "tfopt.demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MOVED:
        module, attribute, instead = _MOVED[name]
        warnings.warn(f"tfopt.{name} is deprecated; use {instead}.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attribute)
    elif name in _RECORDS:
        warnings.warn(
            f"tfopt.{name} left the public namespace; import it from {_RECORDS[name]}.", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(_RECORDS[name]), name)
    else:
        raise AttributeError(f"module 'tfopt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


from tfopt import _registration  # noqa: E402 - after the names above; imports no Keras

_registration.install()
