"""Fuzzes every tfopt reader of untrusted bytes and counts crashes and hangs (both expected 0).

Readers: the flatbuffer parser (`tfopt.analyze.flatbuffer.read_model`), `inspect_tflite`,
`profile`, `tflite_sparsity`, the .npz loaders (`tfopt.datasets.load_npz` and the CLI's
`--data` loader `tfopt._cli.checks.load_npz`), the `.h5` model reader (`--per-reader-h5`
inputs: each read runs the HDF5 library in a child process, ~1 s) and the
`.keras` archive reader (`tfopt._keras.read_model_file` + `unsafe_objects`, which runs
before any Keras deserializer). Each reader gets `--per-reader` inputs made by seeded
random mutations (bit flips, byte and 4-byte-integer overwrites with boundary values,
truncation, insertion, deletion, splicing) of the committed corpus in tests/fuzz_corpus/.

Outcome of one input: `accepted` (the reader returned), `rejected` (a tfopt error, the
expected answer to bad bytes), `crash` (any other exception: a bug), `hang` (no answer
within `--timeout` seconds).

Usage:
    python bench/bench_fuzz.py                      # 10,000 inputs per reader -> bench/results/bench_fuzz.json
    python bench/bench_fuzz.py --per-reader 500     # a quick run
    python bench/bench_fuzz.py --write-corpus       # regenerate tests/fuzz_corpus/ (tiny models), then exit
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import random
import re
import signal
import struct
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _provenance import stamp  # noqa: E402  (bench/_provenance.py: commit, date, host, command)
CORPUS = os.path.join(ROOT, "tests", "fuzz_corpus")
RESULT = os.path.join(ROOT, "bench", "results", "bench_fuzz.json")
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0xFFFFFFFE]


# ----------------------------------------------------------------------------- the corpus


def write_corpus() -> list[str]:
    """Tiny valid models and data files (a few KB each), plus two damaged ones, in tests/fuzz_corpus/."""
    import keras
    import numpy as np

    import tfopt
    from tfopt._io import atomic_write

    os.makedirs(CORPUS, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    dense = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(3)], name="dense")
    conv = keras.Sequential([keras.Input((6, 6, 1), name="image"), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.DepthwiseConv2D(3), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3)], name="conv")
    kernel = dense.layers[0].get_weights()
    kernel[0][::2] = 0.0  # half the rows zero: sparsity has something to find
    dense.layers[0].set_weights(kernel)
    calibration = rng.random((16, 6, 6, 1), dtype=np.float32)
    files = {
        "dense_float32.tflite": tfopt.convert(dense, mode="float32").tflite,
        "dense_float16.tflite": tfopt.convert(dense, mode="float16").tflite,
        "dense_dynamic.tflite": tfopt.convert(dense, mode="dynamic").tflite,
        "conv_int8.tflite": tfopt.convert(conv, mode="int8", calibration=calibration).tflite,
    }
    files["conv_int8_truncated.tflite"] = files["conv_int8.tflite"][: len(files["conv_int8.tflite"]) // 2]
    damaged = bytearray(files["dense_float32.tflite"])
    damaged[40:44] = struct.pack("<I", 0xFFFFFFF0)
    files["dense_float32_damaged.tflite"] = bytes(damaged)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.random((6, 4), dtype=np.float32), y_train=np.arange(6) % 3,
             x_test=rng.random((3, 4), dtype=np.float32), y_test=np.arange(3))
    files["data.npz"] = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.keras")
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
        files["tiny.keras"] = open(path, "rb").read()
        deflated = os.path.join(folder, "deflated.keras")  # Keras stores members; deflate exercises zlib too
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                target.writestr(item.filename, source.read(item.filename))
        files["tiny_deflated.keras"] = open(deflated, "rb").read()
        from tfopt._legacy import tf_keras_module

        tf_keras = tf_keras_module()
        inputs = tf_keras.Input((3,))
        h5_path = os.path.join(folder, "m.h5")
        tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs)).save(h5_path)
        files["tiny_tf_keras.h5"] = open(h5_path, "rb").read()
    written = []
    for name, content in files.items():
        written.append(atomic_write(os.path.join(CORPUS, name), content))
    return written


def load_corpus() -> dict[str, list[bytes]]:
    by_kind = collections.defaultdict(list)
    for name in sorted(os.listdir(CORPUS)):
        if name.startswith("hangs_"):
            continue  # a known hang kept for a unit test; mutations of it would mostly time out
        kind = os.path.splitext(name)[1].lstrip(".")
        with open(os.path.join(CORPUS, name), "rb") as handle:
            by_kind[kind].append(handle.read())
    return dict(by_kind)


# ----------------------------------------------------------------------------- mutations


def mutate(data: bytes, rng: random.Random, corpus: list[bytes], *, keep_identifier: bool) -> bytes:
    """1-8 random edits of `data` (one half the time); keeps the TFLite identifier most of the time so parsing
    goes deep."""
    out = bytearray(data)
    edits = 1
    while edits < 8 and rng.random() < 0.5:
        edits += 1
    for _ in range(edits):
        choice = rng.random()
        if not out:
            out = bytearray(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        pos = rng.randrange(len(out))
        if choice < 0.25:
            out[pos] ^= 1 << rng.randrange(8)
        elif choice < 0.45:
            out[pos] = rng.randrange(256)
        elif choice < 0.65:
            pos = pos - pos % 4
            value = rng.choice(INTERESTING + [len(out), len(out) - pos, rng.getrandbits(32)])
            out[pos:pos + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        elif choice < 0.72:
            del out[rng.randrange(len(out)):]
        elif choice < 0.80:
            end = min(len(out), pos + rng.randint(1, 64))
            del out[pos:end]
        elif choice < 0.88:
            out[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
        else:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                chunk = other[start:start + rng.randint(1, 256)]
                out[pos:pos + len(chunk)] = chunk
    if keep_identifier and len(out) >= 8 and rng.random() < 0.9:
        out[4:8] = b"TFL3"
    return bytes(out)


# ----------------------------------------------------------------------------- readers


def readers(scratch: str):
    from tfopt import _keras
    from tfopt.analyze import flatbuffer, profile, sparsity
    from tfopt._cli import checks as cli_checks
    from tfopt.datasets import load_npz

    def via_file(suffix: str, read):
        path = os.path.join(scratch, "input" + suffix)

        def run(content: bytes):
            with open(path, "wb") as handle:
                handle.write(content)
            return read(path)

        return run

    def keras_archive(path: str):
        info = _keras.read_model_file(path)
        return _keras.unsafe_objects(info.configs)

    return {
        "flatbuffer.read_model": ("tflite", flatbuffer.read_model),
        "inspect_tflite": ("tflite", flatbuffer.inspect_tflite),
        "profile": ("tflite", lambda b: profile.profile(b, batch_size=2)),
        "tflite_sparsity": ("tflite", lambda b: sparsity.tflite_sparsity(b, m_by_n=(2, 4))),
        "datasets.load_npz": ("npz", via_file(".npz", lambda p: load_npz(p, required=()))),
        "cli --data (_cli.checks.load_npz)": ("npz", via_file(".npz", lambda p: cli_checks.load_npz(p, required=()))),
        "keras_archive": ("keras", via_file(".keras", keras_archive)),
        "h5_model_file": ("h5", via_file(".h5", keras_archive)),
    }


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def fuzz_reader(name: str, kind: str, read, corpus: dict[str, list[bytes]], *, count: int, seed: int,
                timeout: float) -> dict:
    from tfopt.errors import TfoptError

    rng = random.Random(f"{seed}-{name}")
    seeds = corpus[kind]
    everything = [b for files in corpus.values() for b in files]
    outcomes = collections.Counter()
    crashes: dict[str, dict] = {}
    slowest = 0.0
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(count):
            data = mutate(rng.choice(seeds), rng, everything, keep_identifier=kind == "tflite")
            began = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                read(data)
                outcomes["accepted"] += 1
            except _Hang:
                outcomes["hang"] += 1
                crashes.setdefault("hang", {"example": i, "count": 0})["count"] += 1
            except TfoptError:
                outcomes["rejected"] += 1
            except Exception as err:  # noqa: BLE001 - what the bench is here to count
                outcomes["crash"] += 1
                key = f"{type(err).__name__}: {re.sub(r'[0-9]+', 'N', str(err))[:160]}"
                entry = crashes.setdefault(key, {"example": i, "count": 0, "input_hex": data[:64].hex()})
                entry["count"] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - began)
    finally:
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    return {
        "inputs": count, "accepted": outcomes["accepted"], "rejected": outcomes["rejected"],
        "crashes": outcomes["crash"], "hangs": outcomes["hang"], "seconds": round(seconds, 2),
        "inputs_per_second": round(count / seconds, 1), "slowest_input_seconds": round(slowest, 4),
        "distinct_failures": crashes,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-reader", type=int, default=10_000)
    parser.add_argument("--per-reader-h5", type=int, default=500, help="inputs for the .h5 reader (~1 s each)")
    parser.add_argument("--h5-timeout", type=float, default=5.0, help="tfopt._keras.H5_READ_TIMEOUT during the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    parser.add_argument("--only", default=None, help="run one reader (a name from the JSON)")
    parser.add_argument("--output", default=RESULT)
    parser.add_argument("--write-corpus", action="store_true")
    args = parser.parse_args(argv)
    if args.per_reader < 1:
        parser.error("--per-reader must be >= 1")
    if args.write_corpus:
        for path in write_corpus():
            print(path, os.path.getsize(path), "bytes")
        return 0
    corpus = load_corpus()
    from tfopt import _keras

    _keras.H5_READ_TIMEOUT = args.h5_timeout  # a damaged .h5 is refused after this long (a hang of the HDF5 library)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfopt-fuzz-") as scratch:
        for name, (kind, read) in readers(scratch).items():
            if args.only and name != args.only:
                continue
            count = args.per_reader_h5 if kind == "h5" else args.per_reader
            results[name] = fuzz_reader(name, kind, read, corpus, count=count, seed=args.seed,
                                        timeout=max(args.timeout, 2 * args.h5_timeout))
            row = results[name]
            print(f"{name:24s} {row['inputs']:>6} inputs  accepted {row['accepted']:>6}  rejected "
                  f"{row['rejected']:>6}  crashes {row['crashes']}  hangs {row['hangs']}  "
                  f"{row['seconds']:.0f} s (slowest {row['slowest_input_seconds']:.3f} s)", flush=True)
    import ai_edge_litert
    import numpy as np

    payload = {
        "command": "python bench/bench_fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "per_reader": args.per_reader, "per_reader_h5": args.per_reader_h5,
        "timeout_seconds": args.timeout, "h5_read_timeout_seconds": args.h5_timeout,
        "corpus": sorted(os.listdir(CORPUS)),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")},
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "total_inputs": sum(r["inputs"] for r in results.values()),
        "total_crashes": sum(r["crashes"] for r in results.values()),
        "total_hangs": sum(r["hangs"] for r in results.values()),
        "readers": results,
    }
    from tfopt._io import write_json

    payload["provenance"] = stamp(script=__file__, command=payload["command"])
    write_json(args.output, payload)
    print(f"wrote {args.output}: {payload['total_inputs']} inputs, {payload['total_crashes']} crashes, "
          f"{payload['total_hangs']} hangs")
    return 0 if payload["total_crashes"] == 0 and payload["total_hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
