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
    "calibration_data": "tfopt.deploy.calibration",
    "CalibrationData": "tfopt.deploy.calibration",
    "convert": "tfopt.deploy.convert",
    "ConversionResult": "tfopt.deploy.convert",
    "CONVERT_MODES": "tfopt.deploy.convert",
    "inspect_tflite": "tfopt.deploy.flatbuffer",
    "TFLiteInspection": "tfopt.deploy.flatbuffer",
    "benchmark": "tfopt.deploy.benchmark",
    "BenchmarkResult": "tfopt.deploy.benchmark",
    "evaluate_tflite": "tfopt.deploy.benchmark",
    "BenchmarkError": "tfopt.deploy.benchmark",
    "xnnpack_coverage": "tfopt.deploy.benchmark",
    "DelegateCoverage": "tfopt.deploy.benchmark",
    "profile": "tfopt.deploy.profile",
    "Profile": "tfopt.deploy.profile",
    "LayerProfile": "tfopt.deploy.profile",
    "export_micro": "tfopt.deploy.micro",
    "MicroExportResult": "tfopt.deploy.micro",
    "UnsupportedOp": "tfopt.deploy.micro",
    "write_c_array": "tfopt.deploy.micro",
    "delegate_report": "tfopt.deploy.delegates",
    "DelegateReport": "tfopt.deploy.delegates",
    "OpDelegation": "tfopt.deploy.delegates",
    "benchmark_sweep": "tfopt.deploy.sweep",
    "SweepResult": "tfopt.deploy.sweep",
    "SweepPoint": "tfopt.deploy.sweep",
    "compare_variants": "tfopt.deploy.sweep",
    "plot_tradeoffs": "tfopt.deploy.sweep",
    "quantize_tflite": "tfopt.deploy.quantizer",
    "compare": "tfopt.deploy.parity",
    "ParityResult": "tfopt.deploy.parity",
    "OutputParity": "tfopt.deploy.parity",
    "LayerParity": "tfopt.deploy.parity",
    "quantize_selective": "tfopt.deploy.selective",
    "SelectiveResult": "tfopt.deploy.selective",
    "advise_sparsity": "tfopt.deploy.advisor",
    "Advice": "tfopt.deploy.advisor",
    "SparsityRule": "tfopt.deploy.advisor",
    "tflite_sparsity": "tfopt.deploy.sparsity",
    "TFLiteSparsity": "tfopt.deploy.sparsity",
    "TensorSparsity": "tfopt.deploy.sparsity",
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
    "to_tf_keras": "tfopt.compress.bridge",
    "to_keras3": "tfopt.compress.bridge",
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
    "cluster_report": "tfopt.compress.cluster_report",
    "ClusterReport": "tfopt.compress.cluster_report",
    "KernelValues": "tfopt.compress.cluster_report",
    "reestimate_batchnorm": "tfopt.compress.batchnorm",
    "quantize": "tfopt.compress.qat",
    "qat_summary": "tfopt.compress.qat",
    "load_qat": "tfopt.compress.qat",
    "QATSummary": "tfopt.compress.qat",
    "FloatLayer": "tfopt.compress.qat",
    "distill": "tfopt.compress.distill",
    "Distiller": "tfopt.compress.distill",
    "export_onnx": "tfopt.deploy.onnx_export",
    "OnnxExportResult": "tfopt.deploy.onnx_export",
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
