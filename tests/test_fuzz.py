"""Property-based fuzzing of every reader of untrusted bytes, seeded from tests/fuzz_corpus/.

A reader may accept a mutated input or reject it with a tfopt error; any other
exception is a bug. About 100 examples per reader here (deterministic, for CI);
bench/bench_fuzz.py runs >= 10,000 per reader and records the counts.
"""

from __future__ import annotations

import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tfopt.errors import TfoptError  # noqa: E402

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")


def _corpus(suffix: str) -> list[bytes]:
    files = sorted(name for name in os.listdir(CORPUS_DIR) if name.endswith(suffix))
    return [open(os.path.join(CORPUS_DIR, name), "rb").read() for name in files]


TFLITE = _corpus(".tflite")
NPZ = _corpus(".npz")
KERAS = _corpus(".keras")
H5 = [b for name, b in zip(sorted(n for n in os.listdir(CORPUS_DIR) if n.endswith(".h5")), _corpus(".h5"))
      if not name.startswith("hangs_")]
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# One edit: (kind, position, value). Positions wrap around the input's length.
EDIT = st.tuples(
    st.sampled_from(["flip", "byte", "int32", "truncate", "delete", "insert"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
              st.integers(min_value=0, max_value=0xFFFFFFFF)),
)


def _apply(data: bytes, edits, *, identifier: bytes | None) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        pos = position % len(out)
        if kind == "flip":
            out[pos] ^= 1 << (value % 8)
        elif kind == "byte":
            out[pos] = value & 0xFF
        elif kind == "int32":
            pos -= pos % 4
            out[pos:pos + 4] = struct.pack("<I", value)
        elif kind == "truncate":
            del out[pos:]
        elif kind == "delete":
            del out[pos:pos + 1 + value % 32]
        else:
            out[pos:pos] = value.to_bytes(4, "little") * (1 + value % 4)
    if identifier and len(out) >= 8:
        out[4:8] = identifier  # keep the file identifier so parsing goes past the first check
    return bytes(out)


def _must_not_crash(read, data: bytes) -> None:
    try:
        read(data)
    except TfoptError:
        pass  # a clear refusal is the right answer to bad bytes


def _tflite_readers():
    from tfopt.analyze import flatbuffer, profile, sparsity

    return {
        "read_model": flatbuffer.read_model,
        "inspect_tflite": flatbuffer.inspect_tflite,
        "profile": lambda b: profile.profile(b, batch_size=3),
        "tflite_sparsity": lambda b: sparsity.tflite_sparsity(b, m_by_n=(2, 4)),
    }


READERS = ["read_model", "inspect_tflite", "profile", "tflite_sparsity"]


def test_fuzz_corpus_is_sane():
    from tfopt.analyze import flatbuffer
    from tfopt.errors import InvalidArgumentError

    names = sorted(name for name in os.listdir(CORPUS_DIR) if name.endswith(".tflite"))
    assert len(names) >= 4 and NPZ and KERAS
    for name in names:
        content = open(os.path.join(CORPUS_DIR, name), "rb").read()
        if "truncated" in name:
            with pytest.raises(InvalidArgumentError, match="not a valid .tflite"):
                flatbuffer.read_model(content)
        elif "damaged" not in name:
            assert flatbuffer.read_model(content).subgraphs, name


@pytest.mark.parametrize("reader", READERS)
@FUZZ
@given(index=st.integers(min_value=0, max_value=len(TFLITE) - 1), edits=st.lists(EDIT, min_size=1, max_size=6),
       keep_identifier=st.booleans())
def test_fuzz_tflite_readers_mutated_corpus(reader, index, edits, keep_identifier):
    data = _apply(TFLITE[index], edits, identifier=b"TFL3" if keep_identifier else None)
    _must_not_crash(_tflite_readers()[reader], data)


@pytest.mark.parametrize("reader", READERS)
@FUZZ
@given(body=st.binary(max_size=1024))
def test_fuzz_tflite_readers_random_bytes(reader, body):
    _must_not_crash(_tflite_readers()[reader], body[:4] + b"TFL3" + body[4:])


def _npz_loaders():
    from tfopt._cli import checks
    from tfopt.datasets import load_npz

    return {"datasets": load_npz, "cli": checks.load_npz}


@pytest.mark.parametrize("loader", ["datasets", "cli"])
@FUZZ
@given(index=st.integers(min_value=0, max_value=len(NPZ) - 1), edits=st.lists(EDIT, min_size=1, max_size=6))
def test_fuzz_load_npz(tmp_path, loader, index, edits):
    path = tmp_path / "data.npz"
    path.write_bytes(_apply(NPZ[index], edits, identifier=None))
    _must_not_crash(lambda _: _npz_loaders()[loader](str(path), required=()), b"")


@pytest.mark.parametrize("loader", ["datasets", "cli"])
@pytest.mark.parametrize("offset,value", [(8, 99), (6, 1)], ids=["unknown-compression", "encrypted"])
def test_load_npz_unsupported_zip_features_refused(tmp_path, loader, offset, value):
    # Zip features Python cannot read raise NotImplementedError / RuntimeError inside np.load.
    content = bytearray(NPZ[0])
    content[offset] = value  # in the first local file header: compression method / flag bits
    index = content.find(b"PK\x01\x02")  # and the same field of its central directory entry
    content[index + offset + 2] = value
    path = tmp_path / "odd.npz"
    path.write_bytes(bytes(content))
    with pytest.raises(TfoptError):
        _npz_loaders()[loader](str(path), required=())


@FUZZ
@given(index=st.integers(min_value=0, max_value=len(KERAS) - 1), edits=st.lists(EDIT, min_size=1, max_size=6))
def test_fuzz_keras_archive_reader(tmp_path, index, edits):
    from tfopt import _keras

    path = tmp_path / "model.keras"
    path.write_bytes(_apply(KERAS[index], edits, identifier=None))

    def read(_):
        _keras.unsafe_objects(_keras.read_model_file(path).configs)

    _must_not_crash(read, b"")


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(EDIT, min_size=1, max_size=4))
def test_fuzz_h5_model_reader(tmp_path, monkeypatch, edits):
    # ~1 s an example: the HDF5 library runs in a child process (bench/bench_fuzz.py runs 500).
    from tfopt import _keras

    monkeypatch.setattr(_keras, "H5_READ_TIMEOUT", 5.0)
    path = tmp_path / "model.h5"
    path.write_bytes(_apply(H5[0], edits, identifier=None))
    _must_not_crash(lambda _: _keras.unsafe_objects(_keras.read_model_file(path).configs), b"")
