"""Bad input to every `tfopt` command: exit 2, one line naming the problem, no traceback, nothing written.

Each case runs in-process through `tfopt.cli.main` (fast); a few run as a real
subprocess too. Every case fails before any training, conversion or measurement.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tfopt import cli

NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """Bad inputs never reach training: the training commands run in-process here (no supervised child, so no
    TensorFlow start per case); tests/test_cli_supervise.py covers the supervised path."""
    monkeypatch.setenv("TFOPT_NO_SUPERVISOR", "1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model (.keras, .h5, .tflite), good data, and a shelf of broken files; built once."""
    import keras

    from tfopt.export.convert import convert

    folder = tmp_path_factory.mktemp("bad_inputs")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(NUM_CLASSES)])
    model.save(str(folder / "model.keras"))
    model.save(str(folder / "model.h5"))
    (folder / "model.tflite").write_bytes(convert(model, check_delegation=False).tflite)
    lam = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES)])
    lam.save(str(folder / "lambda.keras"))
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 40)

    def npz(name, **arrays):
        full = {"x_train": x, "y_train": y, "x_test": x[:10], "y_test": y[:10]}
        full.update(arrays)
        np.savez(folder / name, **{k: v for k, v in full.items() if v is not None})

    npz("data.npz")
    npz("missing_keys.npz", y_test=None, x_test=None)
    npz("nan.npz", x_train=np.where(x > 0.9, np.nan, x))
    npz("inf_test.npz", x_test=np.full((10, 8, 8, 1), np.inf, np.float32))
    npz("label_high.npz", y_train=np.full(40, 12), y_test=np.full(10, 12))
    npz("label_negative.npz", y_train=np.full(40, -1))
    npz("label_float.npz", y_train=np.full(40, 0.5))
    npz("label_string.npz", y_train=np.array(["cat"] * 40))
    npz("length_mismatch.npz", y_train=y[:30])
    npz("empty.npz", x_train=np.zeros((0, 8, 8, 1), np.float32), y_train=np.zeros((0,), np.int64))
    npz("wrong_shape.npz", x_train=x.reshape(40, 64), x_test=x[:10].reshape(10, 64))
    npz("one_hot_wrong.npz", y_train=np.eye(4)[y % 4])
    npz("no_channel_axis.npz", x_train=x[..., 0], x_test=x[:10, ..., 0])
    np.savez(folder / "calibration_no_x.npz", z=x)
    np.save(folder / "single.npy", x)
    os.rename(folder / "single.npy", folder / "single.npz")
    with open(folder / "pickled.npz", "wb") as handle:
        pickle.dump({"x_train": x}, handle)
    np.savez(folder / "objects.npz", x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=y[:3],
             x_test=x[:3], y_test=y[:3])
    (folder / "text.npz").write_text("not an npz")
    good = (folder / "data.npz").read_bytes()
    (folder / "unknown_compression.npz").write_bytes(_patch_zip(good, method=99))
    (folder / "encrypted.npz").write_bytes(_patch_zip(good, flag=0x1))
    (folder / "empty.keras").write_bytes(b"")
    (folder / "text.keras").write_text("this is not a model")
    (folder / "text.h5").write_text("this is not a model")
    (folder / "empty.tflite").write_bytes(b"")
    (folder / "text.tflite").write_text("this is not a flatbuffer")
    content = (folder / "model.tflite").read_bytes()
    (folder / "truncated.tflite").write_bytes(content[: len(content) // 2])
    (folder / "a_file").write_text("a file, not a folder")
    (folder / "a_folder").mkdir()
    (folder / "folder.keras").mkdir()
    (folder / "no_saved_model").mkdir()
    return folder


def _patch_zip(content: bytes, *, method: int | None = None, flag: int | None = None) -> bytes:
    """Rewrites every member's compression method / flag bits in the local and central zip headers."""
    data = bytearray(content)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = data.find(signature)
        while start != -1:
            if flag is not None:
                data[start + flag_at : start + flag_at + 2] = flag.to_bytes(2, "little")
            if method is not None:
                data[start + method_at : start + method_at + 2] = method.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    return bytes(data)


M, H5, T, D = "{d}/model.keras", "{d}/model.h5", "{d}/model.tflite", "{d}/data.npz"
OUT_K, OUT_T = "{out}/out.keras", "{out}/out.tflite"


def train(command, data="{d}/data.npz", *extra, model=M, output=OUT_K):
    return [command, model, "--data", data, "--output", output, *extra]


CASES = [
    # ---------------------------------------------------------------- flags of another command, unknown flags
    ("convert-foreign-flag", ["convert", M, "--output", OUT_T, "--num_clusters", "4"],
     ["unknown flag --num_clusters", "tfopt cluster", "valid flags", "--mode"]),
    ("convert-unknown-flag", ["convert", M, "--output", OUT_T, "--frobnicate", "1"], ["unknown flag --frobnicate"]),
    ("bench-unknown-flag", ["bench", T, "--frobnicate=1"], ["unknown flag --frobnicate", "--num_runs"]),
    ("prune-unknown-flag", train("prune", D, "--frobnicate", "1"), ["unknown flag --frobnicate"]),
    ("cluster-foreign-runs", train("cluster", D, "--runs", "3"), ["unknown flag --runs", "tfopt bench"]),
    ("profile-foreign-epochs", ["profile", M, "--epochs", "2"], ["unknown flag --epochs"]),
    ("export-onnx-foreign-threads", ["export-onnx", M, "--output", "{out}/m.onnx", "--threads", "2"],
     ["unknown flag --threads"]),
    ("export-micro-foreign-mode", ["export-micro", T, "--output", "{out}/c", "--mode", "int8"], ["unknown flag --mode"]),
    ("distill-foreign-sparsity", ["distill", M, M, "--data", D, "--output", OUT_K, "--target_sparsity", "0.5"],
     ["unknown flag --target_sparsity", "tfopt prune"]),
    ("decompose-foreign-clusters", train("decompose", D, "--num_clusters", "4"), ["unknown flag --num_clusters"]),
    ("qat-no-method-flag", train("qat", D, "--method", "qat", output=OUT_T), ["unknown flag --method"]),
    ("demo-foreign-data", ["demo", "--data", D], ["unknown flag --data"]),
    ("quantize-unknown-flag", train("quantize", D, "--frobnicate", "1", output=OUT_T), ["unknown flag --frobnicate"]),
    ("prune-foreign-noxnnpack", train("prune", D, "--noxnnpack"), ["unknown flag --noxnnpack", "tfopt bench"]),
    ("flag-without-value", train("prune", D, "--epochs"), ["missing value", "--epochs"]),
    # ---------------------------------------------------------------- numbers out of range
    ("prune-epochs-0", train("prune", D, "--epochs", "0"), ["--epochs=0"]),
    ("prune-epochs-negative", train("prune", D, "--epochs", "-3"), ["--epochs=-3"]),
    ("prune-epochs-not-a-number", train("prune", D, "--epochs=abc"), ["--epochs=abc"]),
    ("cluster-epochs-0", train("cluster", D, "--epochs", "0"), ["--epochs=0"]),
    ("decompose-epochs-negative", train("decompose", D, "--epochs", "-1", "--rank", "2"), ["--epochs=-1"]),
    ("qat-epochs-0", train("qat", D, "--epochs", "0", output=OUT_T), ["--epochs=0"]),
    ("distill-epochs-0", ["distill", M, M, "--data", D, "--output", OUT_K, "--epochs", "0"], ["--epochs=0"]),
    ("demo-epochs-0", ["demo", "--output", "{out}/demo", "--epochs", "0"], ["--epochs=0"]),
    ("prune-sparsity-above-1", train("prune", D, "--target_sparsity", "1.5"), ["--target_sparsity=1.5", "[0, 1)"]),
    ("prune-sparsity-negative", train("prune", D, "--target_sparsity", "-0.1"), ["--target_sparsity"]),
    ("prune-channels-without-ratio", train("prune", D, "--structure", "channels"), ["--ratio"]),
    ("prune-ratio-1", train("prune", D, "--structure", "channels", "--ratio", "1"), ["--ratio=1"]),
    ("prune-bad-structure", train("prune", D, "--structure", "3:4"), ["--structure"]),
    ("prune-sparsity-nan", train("prune", D, "--target_sparsity", "nan"), ["--target_sparsity=nan"]),
    ("distill-temperature-inf", ["distill", M, M, "--data", D, "--output", OUT_K, "--temperature", "inf"],
     ["--temperature=inf"]),
    ("prune-learning-rate-0", train("prune", D, "--learning_rate", "0"), ["--learning_rate"]),
    ("prune-old-learning-rate-negative", train("prune", D, "--prune_learning_rate", "-1"), ["--learning_rate"]),
    ("prune-old-and-new-spelling", train("prune", D, "--prune_learning_rate", "1e-3", "--learning_rate", "1e-3"),
     ["same flag"]),
    ("prune-batch-size-0", train("prune", D, "--batch_size", "0"), ["--batch_size=0"]),
    ("prune-bad-regex", train("prune", D, "--exclude", "re:conv["), ["regular expression", "--exclude"]),
    ("cluster-one-cluster", train("cluster", D, "--num_clusters", "1"), ["--num_clusters=1"]),
    ("cluster-bad-init", train("cluster", D, "--init", "median"), ["--init"]),
    ("decompose-energy-0", train("decompose", D, "--energy", "0"), ["--energy=0"]),
    ("decompose-param-ratio-above-1", train("decompose", D, "--param_ratio", "1.5"), ["--param_ratio"]),
    ("decompose-two-rules", train("decompose", D, "--rank", "4", "--energy", "0.9"), ["one rule"]),
    ("distill-temperature-0", ["distill", M, M, "--data", D, "--output", OUT_K, "--temperature", "0"],
     ["--temperature"]),
    ("distill-alpha-2", ["distill", M, M, "--data", D, "--output", OUT_K, "--alpha", "2"], ["--alpha"]),
    ("bench-threads-0", ["bench", T, "--threads", "0"], ["--threads"]),
    ("bench-threads-words", ["bench", T, "--threads", "a,b"], ["--threads"]),
    ("bench-batch-sizes-0", ["bench", T, "--batch_sizes", "0"], ["--batch_sizes"]),
    ("bench-num-runs-0", ["bench", T, "--num_runs", "0"], ["--num_runs=0"]),
    ("bench-old-runs-0", ["bench", T, "--runs", "0"], ["--runs=0"]),
    ("bench-bad-input-shape", ["bench", T, "--input_shape", "input=a,b"], ["--input_shape"]),
    ("bench-plot-without-sweep", ["bench", T, "--plot"], ["--plot"]),
    ("bench-no-model", ["bench"], ["model.tflite"]),
    ("profile-batch-size-0", ["profile", M, "--batch_size", "0"], ["--batch_size=0"]),
    ("convert-bad-mode", ["convert", M, "--mode", "int3", "--output", OUT_T], ["unknown --mode 'int3'"]),
    ("convert-int8-no-calibration", ["convert", M, "--mode", "int8", "--output", OUT_T], ["needs --calibration"]),
    ("convert-quantizer-float16", ["convert", M, "--engine", "litert_quantizer", "--mode", "float16", "--output",
                                   OUT_T], ["unknown --mode 'float16'"]),
    ("convert-bad-input-type", ["convert", M, "--input_type", "int7", "--output", OUT_T], ["--input_type"]),
    ("convert-float-fallback-float16", ["convert", M, "--mode", "float16", "--float_fallback", "dense", "--output",
                                        OUT_T], ["--float_fallback", "float16"]),
    ("convert-drop-without-auto", ["convert", M, "--mode", "int8", "--calibration", D, "--max_accuracy_drop", "0.01",
                                   "--output", OUT_T], ["--float_fallback auto"]),
    ("convert-auto-without-calibration", ["convert", M, "--mode", "int8", "--float_fallback", "auto", "--output",
                                          OUT_T], ["--calibration"]),
    ("convert-foreign-exclude", ["convert", M, "--exclude", "dense", "--output", OUT_T], ["unknown flag --exclude",
                                                                                         "tfopt prune"]),
    ("convert-no-output", ["convert", M], ["--output"]),
    ("export-micro-bad-name", ["export-micro", T, "--output", "{out}/c", "--name", "1bad"], ["c identifier"]),
    ("export-onnx-opset-2", ["export-onnx", M, "--output", "{out}/m.onnx", "--opset", "2"], ["--opset=2"]),
    ("quantize-qat-int4", train("quantize", D, "--method", "qat", "--mode", "int4", output=OUT_T), ["int8"]),
    # ---------------------------------------------------------------- outputs that would destroy files
    ("convert-output-is-input", ["convert", M, "--output", M], ["destroy", "--output"]),
    ("convert-output-is-calibration", ["convert", M, "--mode", "int8", "--calibration", D, "--output", D],
     ["destroy", "--calibration"]),
    ("convert-json-is-output", ["convert", M, "--output", OUT_T, "--json", OUT_T], ["same path"]),
    ("export-onnx-output-is-input", ["export-onnx", M, "--output", M], ["destroy"]),
    ("bench-json-is-model", ["bench", T, "--json", T], ["destroy", "--json"]),
    ("bench-json-is-data", ["bench", T, "--data", D, "--json", D], ["destroy", "--data"]),
    ("profile-json-is-model", ["profile", M, "--json", M], ["destroy", "--json"]),
    ("prune-output-equals-json", train("prune", D, "--json", OUT_K), ["same path", "--json"]),
    ("prune-output-is-input", train("prune", D, output=M), ["destroy"]),
    ("prune-json-is-data", train("prune", D, "--json", D), ["destroy", "--data"]),
    ("cluster-output-is-h5-input", train("cluster", D, model=H5, output=H5), ["destroy"]),
    ("distill-output-is-teacher", ["distill", M, H5, "--data", D, "--output", M], ["destroy", "teacher"]),
    ("quantize-json-is-output", train("quantize", D, "--json", OUT_T, output=OUT_T), ["same path"]),
    ("convert-output-under-a-file", ["convert", M, "--output", "{d}/a_file/out.tflite"], ["a_file", "is a file"]),
    ("convert-output-is-a-folder", ["convert", M, "--output", "{d}/a_folder"], ["is a folder"]),
    ("prune-output-is-a-folder", train("prune", D, output="{d}/folder.keras"), ["is a folder"]),
    ("bench-json-under-a-file", ["bench", T, "--json", "{d}/a_file/r.json"], ["is a file"]),
    ("profile-json-is-a-folder", ["profile", M, "--json", "{d}/a_folder"], ["is a folder"]),
    ("export-micro-output-is-a-file", ["export-micro", T, "--output", "{d}/a_file"], ["is a file"]),
    ("export-onnx-output-under-a-file", ["export-onnx", M, "--output", "{d}/a_file/m.onnx"], ["is a file"]),
    ("demo-output-is-a-file", ["demo", "--output", "{d}/a_file"], ["is a file"]),
    ("prune-output-not-keras", train("prune", D, output="{out}/out.txt"), ["--output", ".keras"]),
    ("distill-output-not-keras", ["distill", M, M, "--data", D, "--output", "{out}/out.txt"], ["--output", ".keras"]),
    ("qat-output-not-tflite", train("qat", D, output=OUT_K), ["--output", ".tflite"]),
    # ---------------------------------------------------------------- data files
    ("prune-missing-data", train("prune", "{d}/nothing.npz"), ["not found", "nothing.npz"]),
    ("prune-no-data", ["prune", M, "--output", OUT_K], ["--data"]),
    ("prune-npz-missing-keys", train("prune", "{d}/missing_keys.npz"), ["lacks", "x_test"]),
    ("prune-nan-data", train("prune", "{d}/nan.npz"), ["nan", "x_train"]),
    ("prune-inf-test-data", train("prune", "{d}/inf_test.npz"), ["inf", "x_test"]),
    ("prune-label-out-of-range", train("prune", "{d}/label_high.npz"), ["largest 12", "num_classes=10", "y_train"]),
    ("cluster-label-negative", train("cluster", "{d}/label_negative.npz"), ["negative", "y_train"]),
    ("decompose-label-float", train("decompose", "{d}/label_float.npz"), ["non-integer", "y_train"]),
    ("prune-label-string", train("prune", "{d}/label_string.npz"), ["strings", "y_train"]),
    ("prune-length-mismatch", train("prune", "{d}/length_mismatch.npz"), ["40 example(s)", "30 label(s)"]),
    ("prune-empty-arrays", train("prune", "{d}/empty.npz"), ["empty", "x_train"]),
    ("prune-wrong-input-shape", train("prune", "{d}/wrong_shape.npz"), ["shape (40, 64)", "(n, 8, 8, 1)"]),
    ("cluster-missing-channel-axis", train("cluster", "{d}/no_channel_axis.npz"), ["shape (40, 8, 8)", "(n, 8, 8, 1)"]),
    ("qat-one-hot-wrong-width", train("qat", "{d}/one_hot_wrong.npz", output=OUT_T), ["one-hot", "width 4", "10 classes"]),
    ("distill-label-out-of-range", ["distill", M, M, "--data", "{d}/label_high.npz", "--output", OUT_K],
     ["largest 12"]),
    ("export-onnx-wrong-input-shape", ["export-onnx", M, "--output", "{out}/m.onnx", "--data",
                                       "{d}/wrong_shape.npz"], ["shape (10, 64)", "x_test"]),
    ("bench-label-out-of-range", ["bench", T, "--data", "{d}/label_high.npz"], ["largest 12", "y_test"]),
    ("bench-inf-data", ["bench", T, "--data", "{d}/inf_test.npz"], ["inf", "x_test"]),
    ("bench-missing-data", ["bench", T, "--data", "{d}/nothing.npz"], ["data file not found"]),
    ("convert-calibration-nan", ["convert", M, "--mode", "int8", "--calibration", "{d}/nan.npz", "--output", OUT_T],
     ["nan"]),
    ("convert-calibration-without-x", ["convert", M, "--mode", "int8", "--calibration", "{d}/calibration_no_x.npz",
                                       "--output", OUT_T], ["x_train or x"]),
    ("prune-pickled-npz", train("prune", "{d}/pickled.npz"), ["could not read", "pickled.npz"]),
    ("prune-object-arrays", train("prune", "{d}/objects.npz"), ["python objects"]),
    ("prune-text-npz", train("prune", "{d}/text.npz"), ["could not read"]),
    ("prune-npy-as-npz", train("prune", "{d}/single.npz"), ["single array"]),
    ("prune-npz-unknown-compression", train("prune", "{d}/unknown_compression.npz"), ["could not read",
                                                                                      "NotImplementedError"]),
    ("bench-npz-encrypted", ["bench", T, "--data", "{d}/encrypted.npz"], ["could not read", "RuntimeError"]),
    ("export-micro-nan-data", ["export-micro", T, "--output", "{out}/c", "--data", "{d}/inf_test.npz"], ["inf"]),
    # ---------------------------------------------------------------- model files
    ("prune-empty-keras", train("prune", D, model="{d}/empty.keras"), ["empty", "0 bytes"]),
    ("prune-text-keras", train("prune", D, model="{d}/text.keras"), ["not a valid .keras"]),
    ("convert-empty-keras", ["convert", "{d}/empty.keras", "--output", OUT_T], ["empty"]),
    ("profile-text-keras", ["profile", "{d}/text.keras"], ["not a valid .keras"]),
    ("export-onnx-text-h5", ["export-onnx", "{d}/text.h5", "--output", "{out}/m.onnx"], ["hdf5"]),
    ("profile-truncated-tflite", ["profile", "{d}/truncated.tflite"], ["malformed"]),
    ("bench-truncated-tflite", ["bench", "{d}/truncated.tflite"], ["malformed"]),
    ("bench-empty-tflite", ["bench", "{d}/empty.tflite"], ["not a tflite flatbuffer", "empty"]),
    ("bench-npz-as-model", ["bench", D], ["not a tflite flatbuffer"]),
    ("export-micro-text-tflite", ["export-micro", "{d}/text.tflite", "--output", "{out}/c"], ["not a tflite"]),
    ("profile-missing-model", ["profile", "{d}/nothing.keras"], ["not found"]),
    ("distill-missing-student", ["distill", M, "{d}/nothing.keras", "--data", D, "--output", OUT_K], ["not found"]),
    ("prune-tflite-as-keras", train("prune", D, model=T), [".keras"]),
    ("convert-folder-not-savedmodel", ["convert", "{d}/no_saved_model", "--output", OUT_T], ["is a folder"]),
    ("convert-missing-model", ["convert", "{d}/nothing.keras", "--output", OUT_T], ["model not found"]),
    ("profile-lambda-without-unsafe", ["profile", "{d}/lambda.keras"], ["lambda", "--unsafe"]),
    ("prune-lambda-without-unsafe", train("prune", D, model="{d}/lambda.keras"), ["lambda", "--unsafe"]),
    ("convert-lambda-without-unsafe", ["convert", "{d}/lambda.keras", "--output", OUT_T], ["lambda", "--unsafe"]),
    # ---------------------------------------------------------------- positional arguments
    ("prune-two-models", ["prune", M, M, "--data", D, "--output", OUT_K], ["one model"]),
    ("distill-one-model", ["distill", M, "--data", D, "--output", OUT_K], ["teacher and student"]),
    ("demo-positional", ["demo", "extra"], ["no positional"]),
    ("profile-two-models", ["profile", M, T], ["one model"]),
]


OPTIMIZE_CASES = [
    ("optimize-foreign-flag", ["optimize", M, "--data", D, "--output", "{out}/opt", "--num_clusters", "4"],
     ["unknown flag --num_clusters"]),
    ("optimize-output-is-a-file", ["optimize", M, "--data", D, "--output", "{d}/a_file"], ["is a file"]),
]
if "optimize" in cli.command_names():  # helper F's command, registered when its module exists
    CASES += OPTIMIZE_CASES


def _format(args, folder, out):
    return [a.format(d=folder, out=out) for a in args]


@pytest.mark.parametrize("args, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_input_exits_2_with_one_line(files, tmp_path, capsys, args, words):
    before = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}
    status = cli.main(_format(args, files, tmp_path))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])
    assert {p.name: p.stat().st_mtime_ns for p in files.iterdir()} == before  # no input touched
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_bad_inputs_matrix_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} >= {name for name in cli.command_names() if name != "optimize"}


def test_cli_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_cli_internal_error_keeps_its_traceback(files, tmp_path, monkeypatch):
    """A bug (not a TfoptError) is not dressed up as a user error."""
    from tfopt._cli import profile

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in tfopt")

    monkeypatch.setattr("tfopt.analyze.profile.profile", broken)
    assert profile.NAME == "profile"
    with pytest.raises(RuntimeError, match="a bug in tfopt"):
        cli.main(["profile", str(files / "model.keras")])


def _run(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfopt.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, words",
    [
        (["convert", M, "--output", OUT_T, "--num_clusters", "4"], ["unknown flag --num_clusters", "valid flags"]),
        (["prune", M, "--data", D, "--output", OUT_K, "--epochs", "0"], ["--epochs=0"]),
        (["convert", M, "--output", M], ["destroy"]),
        (["profile", "{d}/truncated.tflite"], ["malformed"]),
    ],
    ids=["foreign-flag", "epochs-0", "output-is-input", "truncated-tflite"],
)
def test_cli_bad_input_in_a_real_process(files, tmp_path, args, words):
    proc = _run(*_format(args, files, tmp_path), cwd=str(tmp_path))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    assert all(word.lower() in lines[0].lower() for word in words), lines[0]


def test_cli_zip_that_is_not_a_keras_archive(files, tmp_path):
    """A valid zip that holds no Keras model: one line that does not say 'not found'."""
    import zipfile

    bad = tmp_path / "zip.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    proc = _run("profile", str(bad), cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "not found" not in proc.stderr.lower() and "Traceback" not in proc.stderr
