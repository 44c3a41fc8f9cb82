"""Clustering coverage: wrap, train a few steps, strip and convert 13 keras.applications and a subclassed model.

Each architecture is built offline (`weights=None`, 75x75 input, 10 logits)
with `keras.applications` (Keras 3: tfopt's own clustering wrapper; RegNetX002,
which Keras 3.15 does not ship, with `tf_keras.applications` through tfmot),
clustered to 16 values with tfopt's defaults, trained for two steps with a
plain `fit` and a `keras.optimizers.Adam` object, stripped with tfopt's
`strip_clustering` (tf_keras rows also with tfmot's, for comparison), checked
(<= 16 unique values in every clustered kernel; stripped outputs equal the
wrapped model's) and converted to float32 TFLite. A row is "ok" only if all of
that passed. Every case runs in its own process with a time limit, so one crash
or hang cannot take the others down.

    python bench/bench_cluster_coverage.py [--json bench/results/bench_cluster_coverage.json] [--only MobileNet]

On a busy machine, run halves in parallel (`--only ... --json a.json`, `--only ... --json b.json`),
then `--merge a.json b.json` writes the combined file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from _provenance import merged  # noqa: E402  (bench/_provenance.py: commit, date, host, command)

ARCHITECTURES = (
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0",
    "ResNet50", "DenseNet121", "NASNetMobile", "InceptionV3", "Xception", "ConvNeXtTiny", "RegNetX002",
)
FLAVORS = ("keras3", "tf_keras")
KERAS3_MISSING = {"RegNetX002"}  # not in keras.applications 3.15: built with tf_keras
SIZE = 75


def build(name: str, flavor: str):
    if name == "Subclassed":
        return _subclassed(flavor)
    k = __import__("keras") if flavor == "keras3" else __import__("tf_keras")
    fn = getattr(k.applications, name, None) or getattr(k.applications.regnet, name)
    kwargs = {"weights": None, "input_shape": (SIZE, SIZE, 3), "classes": 10, "classifier_activation": None}
    if name.startswith(("MobileNetV3", "EfficientNetV2", "ConvNeXt")):
        kwargs["include_preprocessing"] = False
    return fn(**kwargs)


def _subclassed(flavor: str):
    k = __import__("keras") if flavor == "keras3" else __import__("tf_keras")

    class SmallNet(k.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv1 = k.layers.Conv2D(16, 3, activation="relu")
            self.conv2 = k.layers.Conv2D(32, 3, activation="relu")
            self.pool = k.layers.GlobalAveragePooling2D()
            self.dense = k.layers.Dense(64, activation="relu")
            self.head = k.layers.Dense(10)

        def call(self, x):
            return self.head(self.dense(self.pool(self.conv2(self.conv1(x)))))

    model = SmallNet()
    model(k.Input((SIZE, SIZE, 3)))
    return model


def run_one(name: str, flavor: str) -> dict:
    import numpy as np

    from tfopt import _keras
    from tfopt.compress import kmeans
    from tfopt.compress.cluster import cluster, clustering_summary, strip_clustering
    from tfopt.export.convert import convert

    row = {"architecture": name, "flavor": flavor, "stage": "build"}
    start = time.perf_counter()
    try:
        model = build(name, flavor)
        x = np.random.default_rng(0).random((4, SIZE, SIZE, 3), dtype="float32")
        y = np.arange(4) % 10
        row["stage"] = "wrap"
        clustered = cluster(model, num_clusters=16)
        summary = clustering_summary(clustered)
        row.update(clustered_layers=len(summary.layers), skipped_layers=len(summary.skipped))
        reasons: dict[str, int] = {}
        for s in summary.skipped:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        row["skip_reasons"] = reasons
        row["stage"] = "train"
        k = _keras.keras_of(clustered)  # Keras 3 in, Keras 3 out
        clustered.compile(k.optimizers.Adam(1e-4), k.losses.SparseCategoricalCrossentropy(from_logits=True))
        clustered.fit(x, y, batch_size=2, epochs=1, verbose=0)
        row["stage"] = "strip"
        plain = strip_clustering(clustered)
        names = {l.name for l in summary.layers}
        worst = 0
        for layer in plain.layers:
            if layer.name in names:
                kernel = layer.get_weights()[1 if "Separable" in type(layer).__name__ else 0]
                worst = max(worst, kmeans.unique_counts(kernel))
        row["max_unique_clustered"] = int(worst)
        out_plain = np.asarray(plain(x, training=False))
        out_wrapped = np.asarray(clustered(x, training=False))
        row["strip_max_diff"] = float(np.max(np.abs(out_plain - out_wrapped)))
        row["stripped_flavor"] = _keras.keras_flavor(plain)
        row["wrapped_flavor"] = _keras.keras_flavor(clustered)
        row["tfmot_strip"] = _tfmot_strip(clustered) if flavor == "tf_keras" else "n/a"
        row["stage"] = "convert"
        result = convert(plain, mode="float32")
        row["tflite_bytes"] = result.size_bytes
        row["stage"] = "done"
        row["ok"] = True
    except Exception as err:  # noqa: BLE001 - a coverage run records every failure
        row["ok"] = False
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _tfmot_strip(clustered) -> str:
    from tfopt import _keras

    tfmot = _keras.import_tfmot()
    try:
        tfmot.clustering.keras.strip_clustering(clustered)
        return "ok"
    except Exception as err:  # noqa: BLE001
        return f"fails: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "bench_cluster_coverage.json"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--flavors", nargs="*", default=["keras3"])
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--one", nargs=2, metavar=("ARCH", "FLAVOR"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--merge", nargs="*", help="combine the rows of JSON files written by earlier --only runs")
    args = parser.parse_args()
    if args.one:
        with open(args.out, "w") as handle:
            json.dump(run_one(*args.one), handle)
        return 0

    rows, parts = [], []
    for path in args.merge or []:
        with open(path) as handle:
            parts.append(json.load(handle))
        rows.extend(parts[-1]["rows"])
    names = [] if args.merge else args.only or [*ARCHITECTURES, "Subclassed"]
    for name in names:
        for flavor in args.flavors:
            if flavor == "keras3" and name in KERAS3_MISSING:
                flavor = "tf_keras"
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = tmp.name
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", name, flavor, "--out", out],
                    check=False, capture_output=True, text=True, timeout=args.timeout,
                )
                if proc.returncode == 0:
                    with open(out) as handle:
                        row = json.load(handle)
                else:
                    row = {"architecture": name, "flavor": flavor, "ok": False,
                           "error": f"process exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
            except subprocess.TimeoutExpired:
                row = {"architecture": name, "flavor": flavor, "ok": False, "error": f"timeout after {args.timeout} s"}
            finally:
                os.remove(out)
            rows.append(row)
            status = "ok" if row.get("ok") else f"FAIL at {row.get('stage', '?')}: {row.get('error')}"
            print(
                f"{name:<18} {flavor:<9} clustered {row.get('clustered_layers', '-')!s:>4} "
                f"skipped {row.get('skipped_layers', '-')!s:>4} unique<= {row.get('max_unique_clustered', '-')!s:>3} "
                f"tfmot strip {str(row.get('tfmot_strip', '-'))[:30]:<30} {row.get('seconds', '-')!s:>6}s  {status}",
                flush=True,
            )
    totals = {
        flavor: {"ok": sum(1 for r in rows if r["flavor"] == flavor and r.get("ok")),
                 "of": sum(1 for r in rows if r["flavor"] == flavor)}
        for flavor in sorted({r["flavor"] for r in rows})
    }
    tfmot_ok = {
        flavor: sum(1 for r in rows if r["flavor"] == flavor and r.get("tfmot_strip") == "ok")
        for flavor in sorted({r["flavor"] for r in rows}) if flavor == "tf_keras"
    }
    payload = {"provenance": merged(parts, script=__file__, ran=bool(names)), "size": SIZE, "num_clusters": 16,
               "totals": totals, "tfmot_strip_ok": tfmot_ok, "rows": rows}
    from tfopt._io import write_json

    write_json(args.json, payload)
    print(f"succeeded: {totals}; tfmot's strip_clustering ok on {tfmot_ok}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
