"""The public surface: one namespace, lazy and side-effect free, and both Keras flavours."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import tfopt


def test_all_names_resolve():
    for name in tfopt.__all__:
        assert getattr(tfopt, name) is not None, name


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
