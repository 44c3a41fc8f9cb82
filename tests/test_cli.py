"""The `tfopt` CLI: the dispatcher, per-command flags, deprecated spellings, and the commands that do not train.

Commands run in-process through `tfopt.cli.main` on a tiny model trained once on
real digits; two runs go through a real subprocess (the console entry point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tfopt import cli
from tfopt._cli import common


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "tfopt.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """digits (real 8x8 images) as data.npz, a small CNN trained on them (.keras) and its float .tflite."""
    import keras

    from tfopt.datasets import load_dataset
    from tfopt.export.convert import convert

    folder = tmp_path_factory.mktemp("cli")
    data = load_dataset("digits")
    data.to_npz(str(folder / "data.npz"))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(16, activation="relu", name="dense_1"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=15, verbose=0)
    model.save(str(folder / "model.keras"))
    (folder / "model.tflite").write_bytes(convert(model, check_delegation=False).tflite)
    return folder


# ----------------------------------------------------------------------------- dispatcher and flags


def test_cli_usage_lists_commands():
    proc = run_cli()
    assert proc.returncode == 2
    for name in ("demo", "convert", "bench", "qat", "quantize", "export-micro"):
        assert f"  {name} " in proc.stdout


def test_cli_every_command_has_its_own_flags():
    names = cli.command_names()
    assert {"demo", "convert", "bench", "profile", "prune", "cluster", "qat", "decompose", "distill",
            "export-onnx", "export-micro", "quantize"} <= set(names)
    for name in names:
        module = cli.command_module(name)
        assert module.NAME == name and module.HELP
        fv = cli.command_flags(module)
        assert len(list(fv)) >= 2
    for shared in ("epochs", "output", "data", "mode", "num_clusters", "runs"):
        assert shared not in flags.FLAGS  # nothing is defined on absl's global flags


def test_cli_missing_command_module_is_simply_absent(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", "ghost_command_that_does_not_exist")
    assert "ghost" not in cli.command_names()
    assert cli.main(["ghost"]) == 2
    assert "unknown command 'ghost'" in capsys.readouterr().err


def test_cli_optimize_is_a_command_with_its_own_flags():
    assert "optimize" in cli.command_names()
    module = cli.command_module("optimize")
    assert module.NAME == "optimize" and module.HELP
    fv = cli.command_flags(module)
    assert {"max_accuracy_drop", "max_trials", "storage", "workers"} <= set(fv)


@pytest.mark.parametrize("argv", [["convert", "--help"], ["help", "convert"], ["convert", "model.keras", "-h"]],
                         ids=["--help", "help-command", "-h"])
def test_cli_help_lists_the_command_flags_only(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "--mode" in out and "--calibration" in out and "--[no]unsafe" in out
    assert "--num_clusters" not in out and "--epochs" not in out


def test_cli_help_lists_deprecated_spellings(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "deprecated spellings" in out and "--runs" in out and "use --num_runs" in out


@pytest.mark.parametrize(
    "text, rules",
    [
        ("conv,dense", ["conv", "dense"]),
        ("re:conv_\\d{1,2},head", ["re:conv_\\d{1,2}", "head"]),
        ("re:(a|b),c", ["re:(a|b)", "c"]),
        ("re:x[,;]y", ["re:x[,;]y"]),
        ("re:a\\,b", ["re:a,b"]),
        (" a , ,b ", ["a", "b"]),
    ],
    ids=["names", "braces", "parens", "brackets", "escaped", "blanks"],
)
def test_cli_layer_rules_keep_commas_inside_regexes(text, rules):
    assert common.split_rules(text) == rules


def test_cli_layer_rules_repeat_and_check_regexes():
    assert common.layer_rule(["a,b", "re:c{1,2}"], "exclude") == ["a", "b", "re:c{1,2}"]
    assert common.layer_rule(None, "exclude") is None
    with pytest.raises(common.CLIError, match="not a valid regular expression"):
        common.layer_rule(["re:("], "include")


def test_cli_error_is_an_invalid_argument_error():
    from tfopt.errors import InvalidArgumentError, TfoptError

    assert issubclass(common.CLIError, InvalidArgumentError) and issubclass(common.CLIError, TfoptError)


def test_cli_one_line_strips_colours_and_breaks():
    assert cli.one_line("\x1b[1mbad\x1b[0m\n  shape\n") == "bad shape"
    assert len(cli.one_line("x" * 5000)) == 1000


# ----------------------------------------------------------------------------- convert, bench, profile, exports


def test_cli_convert_then_bench_in_real_processes(files, tmp_path):
    out, report = tmp_path / "m_int8.tflite", tmp_path / "bench.json"
    proc = run_cli("convert", str(files / "model.keras"), "--mode", "int8", "--calibration", str(files / "data.npz"),
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    from tfopt.analyze.flatbuffer import inspect_tflite

    assert set(inspect_tflite(str(out)).precision_counts) == {"int8"}
    proc = run_cli("bench", str(out), "--data", str(files / "data.npz"), "--threads", "1", "--runs", "5",
                   "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "--runs is deprecated; use --num_runs" in proc.stderr
    payload = json.loads(report.read_text())
    assert payload["accuracy"] > 0.8 and payload["latency_ms_median"] > 0 and payload["size_bytes"] == out.stat().st_size


def test_cli_convert_quantizer_accepts_old_16x8_spelling(files, tmp_path, capsys):
    out, report = tmp_path / "m16.tflite", tmp_path / "m16.json"
    status = cli.main(["convert", str(files / "model.keras"), "--engine", "litert_quantizer", "--mode", "16x8",
                       "--calibration", str(files / "data.npz"), "--num_samples", "32", "--output", str(out),
                       "--json", str(report)])
    assert status == 0
    assert "--mode 16x8 is deprecated; use --mode int16x8" in capsys.readouterr().err
    payload = json.loads(report.read_text())
    assert payload["mode"] == "int16x8" and payload["engine"] == "litert_quantizer"
    assert out.stat().st_size == payload["size_bytes"]
    assert "int16x8" in payload["inspection"]["precision_counts"]


def test_cli_convert_quantizes_a_float_tflite(files, tmp_path, capsys):
    out = tmp_path / "from_tflite.tflite"
    assert cli.main(["convert", str(files / "model.tflite"), "--output", str(out)]) == 2
    assert "--engine litert_quantizer" in capsys.readouterr().err
    assert cli.main(["convert", str(files / "model.tflite"), "--engine", "litert_quantizer", "--mode", "int8",
                     "--calibration", str(files / "data.npz"), "--output", str(out)]) == 0
    from tfopt.analyze.flatbuffer import inspect_tflite

    assert "int8" in inspect_tflite(str(out)).precision_counts


def test_cli_bench_sweep_and_plot_next_to_json(files, tmp_path):
    report = tmp_path / "sweep.json"
    assert cli.main(["bench", str(files / "model.tflite"), "--threads", "1,2", "--num_runs", "3", "--warmup_runs",
                     "1", "--plot", "--json", str(report)]) == 0
    payload = json.loads(report.read_text())
    assert payload["plot"] == str(tmp_path / "sweep_sweep.png") and os.path.getsize(payload["plot"]) > 0
    assert "sweep" in payload


def test_cli_profile_keras_and_tflite(files, tmp_path, capsys):
    for source in ("model.keras", "model.tflite"):
        out = tmp_path / f"{source}.json"
        assert cli.main(["profile", str(files / source), "--batch_size", "2", "--profile_rows", "3",
                         "--json", str(out)]) == 0
        payload = json.loads(out.read_text())
        assert payload["macs"] > 0 and payload["flops"] == 2 * payload["macs"] and payload["params"] > 0
        assert payload["layers"] and {"name", "macs", "params"} <= set(payload["layers"][0])
    assert "--profile_rows is deprecated; use --max_rows" in capsys.readouterr().err


def test_cli_export_onnx_with_old_samples_spelling(files, tmp_path):
    pytest.importorskip("tf2onnx")
    out, report = tmp_path / "m.onnx", tmp_path / "onnx.json"
    assert cli.main(["export-onnx", str(files / "model.keras"), "--output", str(out), "--data",
                     str(files / "data.npz"), "--onnx_samples", "32", "--json", str(report)]) == 0
    payload = json.loads(report.read_text())
    assert out.exists() and payload["paths"]["onnx"] == str(out)
    assert payload["num_samples"] == 32 and payload["max_abs_diff"] <= 1e-4


def test_cli_export_micro_writes_c_files(files, tmp_path):
    pytest.importorskip("tflite_micro")
    report = tmp_path / "micro.json"
    assert cli.main(["export-micro", str(files / "model.tflite"), "--output", str(tmp_path / "c"), "--data",
                     str(files / "data.npz"), "--micro_samples", "8", "--name", "digits", "--json",
                     str(report)]) == 0
    payload = json.loads(report.read_text())
    assert payload["ok"] and payload["num_samples"] == 8 and payload["unsupported_ops"] == []
    assert (tmp_path / "c" / "digits_model_data.cc").exists() and (tmp_path / "c" / "digits_model_data.h").exists()


def test_cli_data_checks_accept_one_hot_and_integral_float_labels(files):
    from tfopt._cli import checks

    x = np.zeros((4, 8, 8, 1), np.float32)
    checks.check_xy(x, np.eye(10)[[0, 1, 2, 9]], x_name="x", y_name="y", source="s", num_classes=10,
                    input_shape=(8, 8, 1))
    checks.check_xy(x, np.array([0.0, 1.0, 2.0, 9.0]), x_name="x", y_name="y", source="s", num_classes=10,
                    input_shape=(None, None, 1))
    with pytest.raises(ValueError, match="largest 10"):
        checks.check_xy(x, np.array([0, 1, 2, 10]), x_name="x", y_name="y", source="s", num_classes=10)


def test_cli_unsafe_opts_in_to_a_lambda_model(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(3)])
    model.save(str(tmp_path / "lambda.keras"))
    assert cli.main(["profile", str(tmp_path / "lambda.keras")]) == 2
    assert "--unsafe" in capsys.readouterr().err
    assert cli.main(["profile", str(tmp_path / "lambda.keras"), "--unsafe", "--json", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["params"] == 15


@pytest.mark.slow  # trains, converts four ways and benchmarks each
def test_cli_demo_small(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(out), "--dataset", "digits", "--epochs", "1", "--num_runs", "2",
                     "--max_test_examples", "100"]) == 0
    assert (out / "report.json").exists() and (out / "report.md").exists()
