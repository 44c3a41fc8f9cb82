"""delegate_report: XNNPACK coverage op by op (measured), GPU compatibility by the delegate's rules."""

from __future__ import annotations

import pytest

from tfopt.export.convert import convert
from tfopt.measure.delegates import GPU_OPS, delegate_report


@pytest.fixture(scope="module")
def topk_model():
    """A float model whose TOPK_V2 neither XNNPACK nor the GPU delegate takes."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
    def head(x):
        values, _ = tf.math.top_k(tf.nn.relu(x) + 1.0, k=3)
        return values

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [head.get_concrete_function()], head
    ).convert()


def test_delegate_report_int8_cnn_fully_covered(tiny_cnn, rng):
    calibration = rng.random((20, 8, 8, 1)).astype("float32")
    report = delegate_report(convert(tiny_cnn, mode="int8", calibration=calibration))
    names = [op.op for op in report.ops]
    assert "CONV_2D" in names and "FULLY_CONNECTED" in names
    assert report.xnnpack_delegated_ops == report.xnnpack_total_ops == len(report.ops)
    assert all(op.xnnpack and op.gpu for op in report.ops)
    assert report.gpu_compatible and report.gpu_blockers == ()
    assert report.signatures["serving_default"]["inputs"] == ["image"]
    assert "XNNPACK: took" in report.summary()
    assert set(report.to_dict()) >= {
        "ops",
        "gpu_compatible",
        "gpu_blockers",
        "xnnpack_undelegated",
        "analyzer_gpu_verdict",
    }


def test_delegate_report_flags_topk_for_both_delegates(topk_model):
    report = delegate_report(topk_model)
    topk = [op for op in report.ops if op.op == "TOPK_V2"]
    assert len(topk) == 1 and topk[0].xnnpack is False and topk[0].gpu is False
    assert any(b.startswith("TOPK_V2#") for b in report.gpu_blockers)
    assert not report.gpu_compatible
    assert f"TOPK_V2#{topk[0].index}" in report.xnnpack_undelegated
    # The analyzer in this wheel calls every model GPU-compatible; the report says so instead of trusting it.
    if report.analyzer_gpu_verdict:
        assert any("analyzer" in note for note in report.notes)


def test_delegate_report_custom_op_explained_not_crash(topk_model):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    obj = fu.read_model_from_bytearray(bytearray(topk_model))
    code = obj.operatorCodes[obj.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = 32
    code.customCode = "VendorOp"
    report = delegate_report(bytes(fu.convert_object_to_bytearray(obj)))
    assert report.xnnpack_total_ops is None and all(
        op.xnnpack is None for op in report.ops
    )
    assert any("VendorOp" in n for n in report.notes)
    assert (
        report.ops[0].op == "CUSTOM:VendorOp"
        and "no GPU kernel" in report.ops[0].gpu_reason
    )


def test_delegate_report_dynamic_dims_block_gpu():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, None, 4], tf.float32)])
    def pool(x):
        return tf.nn.relu(x) * 2.0

    content = tf.lite.TFLiteConverter.from_concrete_functions(
        [pool.get_concrete_function()], pool
    ).convert()
    report = delegate_report(content, input_shapes={"0": [1, 5, 4]})
    assert report.xnnpack_total_ops == len(report.ops)
    assert any("static shapes" in op.gpu_reason for op in report.ops)


def test_delegate_report_rejects_non_tflite():
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        delegate_report(b"\x00" * 64)


def test_gpu_ops_table_holds_the_common_ops():
    assert {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "ADD",
        "SOFTMAX",
        "RESHAPE",
    } <= GPU_OPS
    assert "TOPK_V2" not in GPU_OPS and "NON_MAX_SUPPRESSION_V4" not in GPU_OPS
