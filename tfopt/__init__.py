"""tfopt: make Keras models smaller and faster for LiteRT, and prove it on the runtime.

The public API lives here and only here. Names load lazily on first use, so
`import tfopt` is cheap and changes no global state (in particular it does not
change which Keras `tf.keras` resolves to).

>>> import tfopt
>>> sorted(tfopt.__all__)[:3]
['BenchmarkResult', 'ConversionResult', 'TFLiteInspection']
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    # deploy: model -> artefact -> measurements
    "calibration_data": "tfopt.export.calibration",
    "CalibrationData": "tfopt.export.calibration",
    "convert": "tfopt.export.convert",
    "ConversionResult": "tfopt.export.convert",
    "CONVERT_MODES": "tfopt.export.convert",
    "inspect_tflite": "tfopt.analyze.flatbuffer",
    "TFLiteInspection": "tfopt.analyze.flatbuffer",
    "benchmark": "tfopt.measure.benchmark",
    "BenchmarkResult": "tfopt.measure.benchmark",
    "evaluate_tflite": "tfopt.measure.benchmark",
    "BenchmarkError": "tfopt.measure.benchmark",
    "xnnpack_coverage": "tfopt.measure.benchmark",
    "DelegateCoverage": "tfopt.measure.benchmark",
    "profile": "tfopt.analyze.profile",
    "Profile": "tfopt.analyze.profile",
    "LayerProfile": "tfopt.analyze.profile",
    "export_micro": "tfopt.export.micro",
    "MicroExportResult": "tfopt.export.micro",
    "UnsupportedOp": "tfopt.export.micro",
    "write_c_array": "tfopt.export.micro",
    "delegate_report": "tfopt.measure.delegates",
    "DelegateReport": "tfopt.measure.delegates",
    "OpDelegation": "tfopt.measure.delegates",
    "benchmark_sweep": "tfopt.measure.sweep",
    "SweepResult": "tfopt.measure.sweep",
    "SweepPoint": "tfopt.measure.sweep",
    "compare_variants": "tfopt.report",
    "plot_tradeoffs": "tfopt.report",
    "quantize_tflite": "tfopt.export.quantizer",
    "compare": "tfopt.measure.parity",
    "ParityResult": "tfopt.measure.parity",
    "OutputParity": "tfopt.measure.parity",
    "LayerParity": "tfopt.measure.parity",
    "quantize_selective": "tfopt.export.selective",
    "SelectiveResult": "tfopt.export.selective",
    "advise_sparsity": "tfopt.optimize.advisor",
    "Advice": "tfopt.optimize.advisor",
    "SparsityRule": "tfopt.optimize.advisor",
    "tflite_sparsity": "tfopt.analyze.sparsity",
    "TFLiteSparsity": "tfopt.analyze.sparsity",
    "TensorSparsity": "tfopt.analyze.sparsity",
    # configs in, new model out
    "apply": "tfopt.config",
    "Config": "tfopt.config",
    "PruneConfig": "tfopt.config",
    "ChannelPruneConfig": "tfopt.config",
    "ClusterConfig": "tfopt.config",
    "QATConfig": "tfopt.config",
    "LowRankConfig": "tfopt.config",
    # compress: model -> model
    "prune": "tfopt.compress.prune",
    "strip": "tfopt.api",
    "pruning_summary": "tfopt.compress.prune",
    "load_pruned": "tfopt.compress.prune",
    "sparsity_logger": "tfopt.compress.prune",
    "PruningSummary": "tfopt.compress.prune",
    "LayerSparsity": "tfopt.compress.prune",
    "SkippedLayer": "tfopt.compress.prune",
    "prune_sensitivity": "tfopt.compress.sensitivity",
    "SensitivityResult": "tfopt.compress.sensitivity",
    "LayerSensitivity": "tfopt.compress.sensitivity",
    "allocate_sparsity": "tfopt.compress.sensitivity",
    "prune_channels": "tfopt.compress.channels",
    "ChannelPruneResult": "tfopt.compress.channels",
    "to_tf_keras": "tfopt._legacy.bridge",
    "to_keras3": "tfopt._legacy.bridge",
    "decompose": "tfopt.compress.lowrank",
    "plan_decomposition": "tfopt.compress.lowrank",
    "DecompositionPlan": "tfopt.compress.lowrank",
    "LayerDecomposition": "tfopt.compress.lowrank",
    "cluster": "tfopt.compress.cluster",
    "strip_clustering": "tfopt.compress.cluster",
    "clustering_summary": "tfopt.compress.cluster",
    "load_clustered": "tfopt.compress.cluster",
    "ClusteringSummary": "tfopt.compress.cluster",
    "ClusteredLayer": "tfopt.compress.cluster",
    "cluster_report": "tfopt.analyze.cluster_report",
    "ClusterReport": "tfopt.analyze.cluster_report",
    "KernelValues": "tfopt.analyze.cluster_report",
    "reestimate_batchnorm": "tfopt.compress.batchnorm",
    "quantize": "tfopt.compress.qat",
    "qat_summary": "tfopt.compress.qat",
    "load_qat": "tfopt.compress.qat",
    "QATSummary": "tfopt.compress.qat",
    "FloatLayer": "tfopt.compress.qat",
    "distill": "tfopt.compress.distill",
    "Distiller": "tfopt.compress.distill",
    "export_onnx": "tfopt.export.onnx_export",
    "OnnxExportResult": "tfopt.export.onnx_export",
    # reports, data, demo
    "variant_report": "tfopt.report",
    "VariantReport": "tfopt.report",
    "load_dataset": "tfopt.datasets",
    "Dataset": "tfopt.datasets",
    "run_demo": "tfopt.demo",
    "DemoResult": "tfopt.demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
