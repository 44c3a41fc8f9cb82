"""The public surface: one namespace, lazy and side-effect free, and both Keras flavours."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import tfopt


PUBLIC = [
    "BenchmarkError", "ChannelPruneConfig", "ClusterConfig", "Config", "Constraints", "DistillConfig",
    "FineTuneConfig", "LowRankConfig", "PTQConfig", "PruneConfig", "QATConfig", "TfoptError",
    "UnsupportedModelError", "apply", "benchmark", "benchmark_sweep", "calibration_data", "cluster", "compare",
    "compare_variants", "convert", "decompose", "delegate_report", "distill", "evaluate", "export_micro",
    "export_onnx", "inspect_tflite", "load_model", "optimize", "plot_tradeoffs", "profile", "prune",
    "prune_channels", "prune_sensitivity", "qat", "reestimate_batchnorm", "strip", "summary",
]


def test_public_names_are_pinned():
    # The surface changes only on purpose: edit PUBLIC, the README and docs/index.md together.
    assert tfopt.__all__ == sorted(PUBLIC)
    assert len(tfopt.__all__) <= 45


def test_old_names_still_work_with_a_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tfopt.quantize is tfopt.qat
        assert tfopt.strip_clustering is tfopt.strip
    assert all(issubclass(w.category, DeprecationWarning) for w in caught) and len(caught) == 2
    assert "tfopt.qat" in str(caught[0].message)


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        tfopt.frobnicate  # noqa: B018


def test_public_names_resolve_to_the_tfopt_object_of_that_name_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a public name is never a deprecated alias
        objects = {name: getattr(tfopt, name) for name in tfopt.__all__}
    wrong = {
        name: f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__name__', type(obj).__name__)}"
        for name, obj in objects.items()
        if not callable(obj) or getattr(obj, "__name__", None) != name
        or not getattr(obj, "__module__", "").startswith("tfopt.")
    }
    assert not wrong, f"public names bound to another object: {wrong}"


def test_public_names_have_docstrings_with_examples():
    missing = [
        name
        for name in tfopt.__all__
        if callable(getattr(tfopt, name))
        and not isinstance(getattr(tfopt, name), type)
        and ">>>" not in (getattr(tfopt, name).__doc__ or "")
        and "```" not in (getattr(tfopt, name).__doc__ or "")
    ]
    assert not missing, f"public functions without a runnable example: {missing}"


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_import_tfopt_is_cheap_and_leaves_tf_keras_alone():
    out = _fresh(
        """
        import os, sys
        import tfopt
        heavy = [m for m in ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization") if m in sys.modules]
        import tensorflow as tf, keras
        print(heavy, os.environ.get("TF_USE_LEGACY_KERAS"), tf.keras.Model is keras.Model)
        """
    )
    assert out == "[] None True"


def test_tfmot_import_is_contained():
    out = _fresh(
        """
        import os
        from tfopt import _keras
        _keras.import_tfmot()
        import tensorflow as tf, keras
        print(os.environ.get("TF_USE_LEGACY_KERAS"), tf.keras.Model is keras.Model)
        """
    )
    assert out == "None True"


def test_keras_finds_tfopt_layers_after_import_tfopt():
    # A fresh process that imports tfopt and then Keras (directly or through tf.keras) can load wrapped
    # models with a plain keras.models.load_model: the registering modules are imported after Keras.
    out = _fresh(
        """
        import sys
        import tfopt
        assert "keras" not in sys.modules
        import tensorflow as tf
        tf.keras.layers.Dense(1)
        from keras.saving import get_registered_object
        names = ["tfopt>PruneWrapper", "tfopt>ClusterWeights", "tfopt>QuantizeWrapper", "tfopt>Distiller"]
        print(all(get_registered_object(n) is not None for n in names))
        """
    )
    assert out == "True"
