"""What a new user meets first at the command line: `--version`, `--json -`, `--no-FLAG`, "did you mean",
fix hints spoken as flags, and one version for the package.

Most runs go through `tfopt.cli.main` in-process on a tiny model trained on real digits; the
`--json -` check also runs the console entry point in a subprocess, where TensorFlow's own
start-up lines must not reach stdout.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import tfopt
from tfopt import cli
from tfopt._cli import common

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfopt.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """digits (real 8x8 images) as data.npz, a tiny seeded MLP trained on them (.keras) and its float .tflite."""
    import keras

    from tfopt.datasets import load_dataset
    from tfopt.export.convert import convert

    folder = tmp_path_factory.mktemp("adoption")
    data = load_dataset("digits")
    data.to_npz(str(folder / "data.npz"))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=3, verbose=0)
    model.save(str(folder / "model.keras"))
    (folder / "model.tflite").write_bytes(convert(model, check_delegation=False).tflite)
    return folder, model.count_params()


# ----------------------------------------------------------------------------- version


@pytest.mark.parametrize("spelling", ["--version", "-V", "version"])
def test_cli_version_prints_package_version(spelling, capsys):
    assert cli.main([spelling]) == 0
    assert capsys.readouterr().out.strip() == f"tfopt {tfopt.__version__}"


def test_version_is_single_sourced():
    """One definition (tfopt/_version.py): setup.cfg reads it, the installed metadata and tfopt.__version__ agree."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"].strip() == "attr: tfopt._version.__version__"
    assert importlib.metadata.version("tfopt") == tfopt.__version__, (
        "the installed metadata is stale: reinstall with pip install -e .")
    definitions = [str(p.relative_to(ROOT)) for p in (ROOT / "tfopt").rglob("*.py")
                   if re.search(r"^__version__\s*=", p.read_text(), flags=re.M)]
    assert definitions == [os.path.join("tfopt", "_version.py")]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tfopt.__version__)
    assert f"## {tfopt.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert f"version: {tfopt.__version__}" in (ROOT / "CITATION.cff").read_text()


# ----------------------------------------------------------------------------- --json -


def test_cli_json_dash_prints_json_to_stdout(files, tmp_path, monkeypatch, capsys):
    folder, num_params = files
    monkeypatch.chdir(tmp_path)
    assert cli.main(["profile", str(folder / "model.keras"), "--json", "-"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert payload["params"] == num_params
    assert "paths" not in payload
    assert "Profile of" in captured.err and "wrote stdout" in captured.err  # the table went to stderr
    assert not (tmp_path / "-").exists()


def test_cli_json_dash_subprocess_stdout_is_json_only(files, tmp_path):
    folder, _ = files
    proc = run_cli("profile", str(folder / "model.tflite"), "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(tfopt.profile(str(folder / "model.tflite")).to_dict(),
                                                            default=str)) | {"model": str(folder / "model.tflite")}
    assert os.listdir(tmp_path) == []


def test_cli_json_path_still_writes_a_file(files, tmp_path, capsys):
    folder, num_params = files
    out = tmp_path / "profile.json"
    assert cli.main(["profile", str(folder / "model.keras"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"] == num_params
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}")


# ----------------------------------------------------------------------------- --no-FLAG


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], True), (["--no-per_channel_dense"], False), (["--noper_channel_dense"], False),
     (["--per_channel_dense"], True), (["--no-per_channel_dense", "--per_channel_dense"], True)],
    ids=["default", "no-dash", "absl-no", "on", "last-wins"],
)
def test_cli_no_dash_flag_parses(args, expected):
    fv = cli.command_flags(cli.command_module("convert"))
    cli.parse_flags("convert", fv, ["model.keras", *args])
    assert fv.per_channel_dense is expected


def test_cli_no_dash_after_double_dash_stays_positional():
    fv = cli.command_flags(cli.command_module("profile"))
    assert cli.parse_flags("profile", fv, ["--", "--no-unsafe"]) == ["--no-unsafe"]
    assert fv.unsafe is False and not fv["unsafe"].present


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--no-json"], "only on/off flags take --no-; --json takes a value"),
     (["--no-unsafe=1"], "--no-unsafe takes no value")],
    ids=["value-flag", "with-value"],
)
def test_cli_no_dash_misuse_is_one_line(args, message, capsys):
    assert cli.main(["profile", "m.keras", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfopt profile: error:") and message in err and "\n" not in err


def test_cli_no_per_channel_dense_converts_like_absl_spelling(files, tmp_path):
    """The README's `--no-per_channel_dense` gives the same file as absl's `--noper_channel_dense`, unlike the default."""
    folder, _ = files
    out: dict[str, bytes] = {}
    for label, extra in (("dash", ["--no-per_channel_dense"]), ("absl", ["--noper_channel_dense"]), ("default", [])):
        path = tmp_path / f"{label}.tflite"
        status = cli.main(["convert", str(folder / "model.keras"), "--mode", "int8", "--calibration",
                           str(folder / "data.npz"), "--num_samples", "50", "--output", str(path), *extra])
        assert status == 0
        out[label] = path.read_bytes()
    assert out["dash"] == out["absl"]
    assert out["dash"] != out["default"]  # per-tensor Dense weights: a different (smaller) file
    assert len(out["dash"]) < len(out["default"])


# ----------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    ("argv", "hint"),
    [(["profile", "m.keras", "--max_row", "3"], "Did you mean --max_rows?"),
     (["convert", "m.keras", "--per-channel-dense"], "Did you mean --per_channel_dense?"),
     (["convert", "m.keras", "--no-per-channel-dense"], "Did you mean --no-per_channel_dense?"),
     (["convert", "m.keras", "--calibraton", "d.npz"], "Did you mean --calibration?"),
     (["profle", "m.keras"], "Did you mean `tfopt profile`?"),
     (["optimise", "m.keras"], "Did you mean `tfopt optimize`?")],
    ids=["flag", "hyphens", "no-hyphens", "typo", "command", "british"],
)
def test_cli_did_you_mean(argv, hint, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and "\n" not in err


def test_cli_no_guess_when_nothing_is_close(capsys):
    assert cli.main(["profile", "m.keras", "--zzzz"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag --zzzz" in err and "Did you mean" not in err and "--max_rows" in err


def test_cli_foreign_flag_names_its_command_not_a_guess(capsys):
    assert cli.main(["profile", "m.keras", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "belongs to tfopt" in err and "prune" in err and "Did you mean" not in err


# ----------------------------------------------------------------------------- fix hints as flags


@pytest.mark.parametrize(
    ("command", "message", "expected"),
    [("export-micro", "nothing written: fix the unsupported ops, or pass write_unsupported=True",
      "nothing written: fix the unsupported ops, or pass --write_unsupported"),
     ("export-micro", "convert to full integer: tfopt.convert(model, mode='int8', calibration=..., "
      "input_type='int8', output_type='int8')",
      "convert to full integer: `tfopt convert MODEL --mode int8 --calibration ... --input_type int8 --output_type int8`"),
     ("convert", "Received: input_type='int8', per_channel_dense=False, float_fallback=None.",
      "Received: --input_type int8, --no-per_channel_dense, --float_fallback (not given)."),
     ("convert", "must be one of ('minmax', 'mse').", "must be one of minmax, mse."),
     ("convert", "x has shape (1797, 8, 8). Expected (None, 8, 8, 1).", "x has shape (1797, 8, 8). Expected (N, 8, 8, 1)."),
     ("convert", "keep it in (0, 1); other_option=3 is a library keyword", "keep it in (0, 1); other_option=3 is a library keyword")],
    ids=["boolean", "call", "received", "tuple", "shape", "untouched"],
)
def test_flag_hints(command, message, expected):
    fv = cli.command_flags(cli.command_module(command))
    assert common.flag_hints(message, fv, cli._flag_sets) == expected


def test_cli_library_error_speaks_flags(files, tmp_path, capsys):
    """The library says `sparse=True ... engine='converter'`; the CLI user reads the flags to type."""
    folder, _ = files
    status = cli.main(["convert", str(folder / "model.keras"), "--engine", "litert_quantizer", "--mode", "int8",
                       "--calibration", str(folder / "data.npz"), "--sparse", "--output", str(tmp_path / "m.tflite")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err == "tfopt convert: error: --sparse is a converter option; use --engine converter."
    assert not (tmp_path / "m.tflite").exists()


def test_write_json_dash_outside_dispatcher_goes_to_stdout(capsys):
    payload = {"accuracy": np.float32(0.5), "shape": np.array([1, 2])}
    assert common.write_json(common.STDOUT, payload) == "-"
    assert json.loads(capsys.readouterr().out) == {"accuracy": 0.5, "shape": [1, 2]}


# ----------------------------------------------------------------------------- optional dependencies


def test_missing_legacy_dependency_names_the_extra(monkeypatch):
    from tfopt import _extras
    from tfopt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tf_keras", None)  # `import tf_keras` now raises ImportError
    with pytest.raises(MissingDependencyError, match=re.escape('pip install "tfopt[legacy]"')) as info:
        _extras.require("tf_keras", "Keras 2 (tf_keras) models")
    assert "tf_keras is not installed (needed for Keras 2 (tf_keras) models)" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_require_names_the_missing_dependency_of_a_dependency(tmp_path, monkeypatch):
    """A module that imports a missing optional module: the error names the missing one and its extra."""
    from tfopt import _extras

    (tmp_path / "needs_onnx_thing.py").write_text("import onnx_missing_for_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_extras.EXTRA_OF, "onnx_missing_for_test", "onnx")
    with pytest.raises(ImportError, match=re.escape('onnx_missing_for_test is not installed (needed for ONNX). '
                                                    'Install it with: pip install "tfopt[onnx]"')):
        _extras.require("needs_onnx_thing", "ONNX")


def test_require_keeps_other_import_errors(tmp_path, monkeypatch):
    from tfopt import _extras
    from tfopt.errors import MissingDependencyError

    (tmp_path / "broken_for_test.py").write_text("import module_that_is_nowhere_for_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        _extras.require("broken_for_test", "a feature")
    assert not isinstance(info.value, MissingDependencyError)
    assert info.value.name == "module_that_is_nowhere_for_test"


def test_cli_help_shows_defaults_as_typed(capsys):
    assert cli.main(["profile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 60)" in out and "(default: off)" in out and "'" not in out.split("flags:")[1]
    assert "--no-FLAG turns it off" in out


def test_cli_summary_hints_speak_flags(monkeypatch, capsys):
    """What a command prints (a library summary with a Python hint) reaches the user as flags; --json - stays JSON."""
    module = cli.command_module("profile")

    def fake_main(args, fv):
        print("nothing written: pass unsafe=True, or tfopt.convert(model, mode='int8', calibration=...) first")
        common.write_json(fv.json, {"hint": "unsafe=True"})
        return 0

    monkeypatch.setattr(module, "main", fake_main)
    assert cli.main(["profile", "m.keras", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"hint": "unsafe=True"}  # data is never rewritten
    assert captured.err.strip() == ("nothing written: pass --unsafe, or "
                                    "`tfopt convert MODEL --mode int8 --calibration ...` first")
