"""Hostile and careless inputs to the data loaders: corrupt, forged, empty and huge-declaring files.

Every refusal must be a ValueError/TypeError naming the file (and the dataset, index or argument), raised
before anything of a declared size is allocated; every valid variant must load to the right values.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointpeft.data import ModelNet40, ModelNet40FewShot, ScanObjectNN, SyntheticShapes
from pointpeft.data.safe_pickle import PickleFileError, load_pickle
from pointpeft.data.scanobjectnn import DEFAULT_MAX_BYTES, SCANOBJECTNN_FILES
from pointpeft.data.synthetic import MAX_NOISE, MAX_NUM_POINTS, MAX_NUM_SAMPLES, SCALE_BOUNDS

h5py = pytest.importorskip("h5py")

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLASSES = [f"class{i:02d}" for i in range(40)]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _named(path: Path | str, *parts: str) -> str:
    """A regex matching a message that names ``path`` and then each of ``parts`` (literally)."""
    return ".*".join(re.escape(str(p)) for p in (path, *parts))


# --------------------------------------------------------------------------------------------------
# ScanObjectNN: helpers
# --------------------------------------------------------------------------------------------------


def _scan_path(root: Path) -> Path:
    path = root / SCANOBJECTNN_FILES["OBJ_BG"]["train"]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _points(m: int = 16, p: int = 64, seed: int = 0) -> np.ndarray:
    return _rng(seed).standard_normal((m, p, 3)).astype(np.float32)


def _labels(m: int = 16) -> np.ndarray:
    return (np.arange(m) % 15).astype(np.int64)


def _write_scan(root: Path, data: object = None, label: object = None, **data_options: object) -> Path:
    path = _scan_path(root)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=_points() if data is None else data, **data_options)
        f.create_dataset("label", data=_labels() if label is None else label)
    return path


def _flip(path: Path, start: int, count: int) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(start, start + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _chunk_info(path: Path, index: int) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        info = f["data"].id.get_chunk_info(index)
    return info.byte_offset, info.size


# --------------------------------------------------------------------------------------------------
# ScanObjectNN: corrupt compressed chunks (item 17)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [0.0, 0.5, 0.97])
def test_scanobjectnn_corrupt_gzip_chunk_names_file_dataset_and_rows(tmp_path: Path, where: float) -> None:
    path = _write_scan(tmp_path, compression="gzip", chunks=(4, 64, 3))
    offset, size = _chunk_info(path, 2)  # rows 8..11
    _flip(path, offset + min(int(where * size), size - 4), 4)
    with pytest.raises(ValueError, match=_named(path, "'data' rows 8..11", "corrupt")):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_corrupt_chunk_with_checksum_is_named_when_read(tmp_path: Path) -> None:
    # lzf has no checksum of its own (pointpeft cannot inflate it); fletcher32 makes HDF5 detect the flip
    # on reading, and that HDF5 error is turned into a ValueError naming the rows.
    path = _write_scan(tmp_path, compression="lzf", fletcher32=True, chunks=(4, 64, 3))
    offset, size = _chunk_info(path, 3)
    _flip(path, offset + size // 2, 4)
    with pytest.raises(ValueError, match=_named(path, "cannot read 'data' rows", "OSError")):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_forged_short_gzip_chunk(tmp_path: Path) -> None:
    # A valid zlib stream that decompresses to fewer bytes than the chunk: HDF5 would return leftover
    # memory for the missing part without any error.
    path = _scan_path(tmp_path)
    data = _points(4, 64)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=data.shape, dtype="f4", chunks=(1, 64, 3), compression="gzip")
        for i in range(4):
            payload = data[i : i + 1].tobytes()
            ds.id.write_direct_chunk((i, 0, 0), zlib.compress(payload[:100] if i == 2 else payload))
        f.create_dataset("label", data=_labels(4))
    with pytest.raises(
        ValueError, match=_named(path, "'data' rows 2..2", "decompresses to 100 bytes", "768")
    ):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_truncated_and_garbage_files(tmp_path: Path) -> None:
    path = _write_scan(tmp_path, compression="gzip")
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(ValueError, match=_named(path, "cannot be read as an HDF5 file", "truncated")):
        ScanObjectNN(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=_named(path, "cannot be read as an HDF5 file")):
        ScanObjectNN(tmp_path)


# --------------------------------------------------------------------------------------------------
# ScanObjectNN: declared sizes against the file (item 17)
# --------------------------------------------------------------------------------------------------

HUGE = (10**6, 2048, 3)  # 22.9 GiB of float32


@pytest.mark.parametrize(
    "options",
    [
        dict(chunks=(1, 2048, 3), fillvalue=0.0),  # chunked, no chunk written
        dict(),  # contiguous, never written
        dict(chunks=(10_000, 2048, 3), compression="gzip"),  # compressed, no chunk written
    ],
)
def test_scanobjectnn_huge_declared_shape_is_refused_before_allocating(tmp_path: Path, options: dict) -> None:
    path = _scan_path(tmp_path)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=HUGE, dtype="f4", **options)
        f.create_dataset("label", shape=(HUGE[0],), dtype="i8", chunks=(1000,), fillvalue=0)
    assert os.path.getsize(path) < 2**20  # tiny on disk
    with pytest.raises(
        ValueError, match=_named(path, "'data' declares shape (1000000, 2048, 3)", "never fully")
    ):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_partly_written_dataset_is_refused(tmp_path: Path) -> None:
    path = _scan_path(tmp_path)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(16, 64, 3), dtype="f4", chunks=(4, 64, 3), compression="gzip")
        ds[:8] = _points(8)  # chunks 0 and 1 of 4
        f.create_dataset("label", data=_labels())
    with pytest.raises(ValueError, match=_named(path, "'data'", "in 4 chunks, but only 2 chunks are stored")):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_compressed_size_bounded_by_max_bytes(tmp_path: Path) -> None:
    path = _write_scan(tmp_path, data=np.zeros((16, 64, 3), np.float32) + _points(1), compression="gzip")
    needed = 16 * 64 * 3 * 4
    with pytest.raises(
        ValueError, match=_named(path, "'data' is compressed", f"needs {needed} bytes", "max_bytes=1000")
    ):
        ScanObjectNN(tmp_path, max_bytes=1000)
    assert len(ScanObjectNN(tmp_path, max_bytes=needed)) == 16
    assert DEFAULT_MAX_BYTES == 4 * 2**30
    with pytest.raises(ValueError, match="max_bytes must be an int >= 1, got 0"):
        ScanObjectNN(tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="max_bytes must be an int >= 1, got float"):
        ScanObjectNN(tmp_path, max_bytes=1e9)


def test_scanobjectnn_storage_outside_the_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data", data=_points())
    path = _scan_path(tmp_path)
    with h5py.File(path, "w") as f:
        f["data"] = h5py.ExternalLink(str(other), "/data")
        f.create_dataset("label", data=_labels())
    with pytest.raises(ValueError, match=_named(path, "'data' is an external link", "other.h5")):
        ScanObjectNN(tmp_path)

    raw = tmp_path / "raw.bin"
    raw.write_bytes(_points().tobytes())
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(16, 64, 3), dtype="f4", external=[(str(raw), 0, 16 * 64 * 3 * 4)])
        f.create_dataset("label", data=_labels())
    with pytest.raises(
        ValueError, match=_named(path, "'data' is a virtual dataset or has external raw storage")
    ):
        ScanObjectNN(tmp_path)

    layout = h5py.VirtualLayout(shape=(16, 64, 3), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(16, 64, 3))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("data", layout)
        f.create_dataset("label", data=_labels())
    with pytest.raises(ValueError, match=_named(path, "'data' is a virtual dataset")):
        ScanObjectNN(tmp_path)


# --------------------------------------------------------------------------------------------------
# ScanObjectNN: empty files, point counts (item 10), contents
# --------------------------------------------------------------------------------------------------


def test_scanobjectnn_no_objects_or_no_points(tmp_path: Path) -> None:
    path = _write_scan(tmp_path, data=np.zeros((0, 64, 3), np.float32), label=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=_named(path, "holds no objects", "(0, 64, 3)")):
        ScanObjectNN(tmp_path)
    path = _write_scan(tmp_path, data=np.zeros((4, 0, 3), np.float32), label=_labels(4))
    with pytest.raises(ValueError, match=_named(path, "objects have 0 points", "min_points=1")):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_min_points(tmp_path: Path) -> None:
    path = _write_scan(tmp_path)
    with pytest.raises(ValueError, match=_named(path, "objects have 64 points", "fewer than min_points=65")):
        ScanObjectNN(tmp_path, min_points=65)
    assert ScanObjectNN(tmp_path, min_points=64).points.shape == (16, 64, 3)
    with pytest.raises(ValueError, match="min_points must be an int >= 1, got 0"):
        ScanObjectNN(tmp_path, min_points=0)


@pytest.mark.parametrize(
    ("label", "index", "pattern"),
    [
        (1e30, 5, "is 1e+30: labels must be in [0, 15)"),
        (-1, 5, "is -1.0: labels must be in [0, 15)"),
        (15, 5, "is 15.0: labels must be in [0, 15)"),
        (np.nan, 5, "must be an integer label, got nan"),
        (2.5, 5, "must be an integer label, got 2.5"),
        (np.inf, 5, "must be an integer label, got inf"),
    ],
)
def test_scanobjectnn_bad_label_names_file_and_index(
    tmp_path: Path, label: float, index: int, pattern: str
) -> None:
    labels = _labels().astype(np.float64)
    labels[index] = label
    path = _write_scan(tmp_path, label=labels)
    with pytest.raises(ValueError, match=_named(path, f"'label'[{index}]", pattern)):
        ScanObjectNN(tmp_path)


@pytest.mark.parametrize(
    ("label", "pattern"),
    [
        (np.array(["a"] * 16, dtype="S2"), "'label' must hold integers or floats, got dtype |S2"),
        (np.ones(16, dtype=bool), "'label' must hold integers or floats, got dtype bool"),
        (h5py.Empty("f4"), "'label' has an empty (null) dataspace"),
    ],
)
def test_scanobjectnn_label_dataset_of_wrong_kind(tmp_path: Path, label: object, pattern: str) -> None:
    path = _write_scan(tmp_path, label=label)
    with pytest.raises(ValueError, match=_named(path, pattern)):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_non_finite_and_overflowing_points_name_the_object(tmp_path: Path) -> None:
    data = _points().astype(np.float64)
    data[7, 3, 1] = 1e39  # finite in float64, inf in float32
    data[11, 0, 0] = np.nan
    path = _write_scan(tmp_path, data=data)
    with pytest.raises(
        ValueError, match=_named(path, "'data'[7]", "non-finite", "2 cloud(s) in all", "[7, 11]")
    ):
        ScanObjectNN(tmp_path)


def test_scanobjectnn_degenerate_object(tmp_path: Path) -> None:
    data = _points()
    data[9] = 0.0  # a zero-filled record
    path = _write_scan(tmp_path, data=data)
    with pytest.raises(ValueError, match=_named(path, "'data'[9]", "all 64 points of the cloud are equal")):
        ScanObjectNN(tmp_path)


@pytest.mark.parametrize(("value", "shown"), [(1e20, "1e+20"), (-3e18, "3e+18"), (1e-20, "1e-20")])
def test_scanobjectnn_coordinates_outside_the_ops_range_name_the_object(
    tmp_path: Path, value: float, shown: str
) -> None:
    # Found when the file is read, not by farthest point sampling in the middle of training.
    data = _points()
    if abs(value) < 1:
        data[6] = data[6] / np.abs(data[6]).max() * value  # a whole cloud too small
    else:
        data[6, 2, 1] = value  # one coordinate too large
    path = _write_scan(tmp_path, data=data)
    with pytest.raises(
        ValueError,
        match=_named(path, "'data'[6]", f"largest coordinate magnitude is {shown}", "safe_coordinate_range"),
    ):
        ScanObjectNN(tmp_path)


@pytest.mark.parametrize(
    ("root", "error", "pattern"),
    [
        (None, TypeError, "root must be a path .*got NoneType None"),
        (3, TypeError, "root must be a path .*got int 3"),
        ("", ValueError, "root must be a path to the dataset folder, got an empty string"),
    ],
)
def test_loaders_refuse_a_root_that_is_not_a_path(root: object, error: type, pattern: str) -> None:
    for loader in (ScanObjectNN, ModelNet40, ModelNet40FewShot):
        with pytest.raises(error, match=pattern):
            loader(root)


def test_scanobjectnn_data_group_instead_of_dataset(tmp_path: Path) -> None:
    path = _scan_path(tmp_path)
    with h5py.File(path, "w") as f:
        f.create_group("data")
        f.create_dataset("label", data=_labels())
    with pytest.raises(ValueError, match=_named(path, "missing ['data']", "keys found: ['data', 'label']")):
        ScanObjectNN(tmp_path)


_STORAGE = {
    "contiguous": {},
    "chunked": {"chunks": True},
    "gzip": {"compression": "gzip"},
    "gzip+shuffle+fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "lzf": {"compression": "lzf"},
    "fletcher32": {"fletcher32": True},
}


@FUZZ
@given(
    m=st.integers(1, 6),
    p=st.integers(1, 12),
    dtype=st.sampled_from(["f4", "f8", "i2", "u1"]),
    storage=st.sampled_from(sorted(_STORAGE)),
    label_dtype=st.sampled_from(["i8", "u1", "f4", "f8"]),
    column=st.booleans(),
    bad_label=st.one_of(st.none(), st.sampled_from([-1, 15, 100, 2.5, np.nan])),
    bad_point=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scanobjectnn_fuzz_contents(
    tmp_path: Path, m, p, dtype, storage, label_dtype, column, bad_label, bad_point, seed
) -> None:
    """Valid files load exactly (as float32 / int64); invalid ones raise a ValueError naming the file."""
    rng = _rng(seed)
    if dtype[0] == "f":
        data = (rng.standard_normal((m, p, 3)) * 20).astype(dtype)
    else:
        data = rng.integers(0, 100, (m, p, 3)).astype(dtype)
    if p > 1:
        data[:, 0] = np.arange(3, dtype=dtype) + 1  # no cloud has all its points equal
        data[:, 1] = 0
    labels = rng.integers(0, 15, m).astype(np.float64)
    if bad_label is not None:
        labels[rng.integers(m)] = bad_label
    if label_dtype[0] == "f":
        stored_labels = labels.astype(label_dtype)
    else:  # what an integer dataset can hold of them: 2.5 -> 2, nan -> 0, -1 -> 255 in uint8
        stored_labels = np.nan_to_num(labels, nan=0.0).astype(np.int64).astype(label_dtype)
    bad_data = bad_point and dtype[0] == "f"
    if bad_data:
        data[rng.integers(m), rng.integers(p), rng.integers(3)] = np.inf
    labels_ok = all(float(v).is_integer() and 0 <= v < 15 for v in stored_labels.astype(np.float64))
    expect_error = "data" if bad_data else (None if labels_ok else "label")  # points are checked first
    root = tmp_path / f"case{seed}_{m}_{p}"
    path = _write_scan(
        root, data=data, label=stored_labels[:, None] if column else stored_labels, **_STORAGE[storage]
    )
    if expect_error is not None:
        with pytest.raises(ValueError, match=_named(path, f"'{expect_error}'[")):
            ScanObjectNN(root)
        return
    ds = ScanObjectNN(root)
    np.testing.assert_array_equal(ds.points.numpy(), data.astype(np.float32))
    assert ds.points.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == stored_labels.astype(np.int64).tolist()


# --------------------------------------------------------------------------------------------------
# Restricted unpickler
# --------------------------------------------------------------------------------------------------


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_pickle_errors_are_value_errors(tmp_path: Path) -> None:
    assert issubclass(PickleFileError, ValueError) and issubclass(PickleFileError, pickle.UnpicklingError)
    path = _write(tmp_path / "od.pkl", pickle.dumps(__import__("collections").OrderedDict()))
    with pytest.raises(
        ValueError, match=_named(path, "refused to load the global 'collections.OrderedDict'")
    ):
        load_pickle(path)
    path = _write(tmp_path / "empty.pkl", b"")
    with pytest.raises(ValueError, match=_named(path, "the file is empty")):
        load_pickle(path)


_V8_STATE = pickle.dumps(np.dtype("V8"), protocol=2)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        # A V8 dtype whose state claims it holds Python objects: numpy would read file bytes as pointers.
        (_V8_STATE.replace(b"K\x00tq", b"K?tq"), "refused a dtype state with flags 63"),
        (pickle.dumps(np.zeros(3, dtype=[("a", "f4")]), protocol=2), "sub-arrays or fields"),
        (pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "refused the dtype object"),
        (b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a;\x85\x85R.", "refused to call numpy.ndarray"),
        (b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a;\x85\x85\x81.", "not a type object"),
        (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85U\x01b\x87R.",
            "refused _reconstruct with shape (1000000000,)",
        ),
        (b"\x80\x02]q\x00K\x01aK\x02b.", "refused to set the state of a list"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"ab.", "declares 1099511627776 bytes but only 3"),
        (b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"ab.", "declares 1099511627776 bytes"),
        (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"ab.", "a bytearray declares 1099511627776 bytes"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**40), "declares 1099511627776 bytes"),
        (b"\x80\x05\x97.", "not a valid pickle file"),  # NEXT_BUFFER without out-of-band buffers
    ],
)
def test_pickle_refuses_forged_numpy_and_huge_lengths(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = _write(tmp_path / "forged.pkl", content)
    with pytest.raises(PickleFileError, match=_named(path, pattern)):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_pickle_plain_dtypes_still_load(tmp_path: Path, protocol: int) -> None:
    obj = [
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.array(["ab", "c"], dtype="U2"),
        np.array([b"x"], dtype="S1"),
        np.array([1 + 2j]),
        np.array(["2020-01-01"], dtype="M8[s]"),
        np.float16(1.5),
    ]
    if protocol == 5:
        obj.append(bytearray(b"raw"))  # protocol 5 has an opcode for it (older ones name builtins.bytearray)
    content = pickle.dumps(obj, protocol=protocol)
    path = _write(tmp_path / "plain.pkl", content)
    back = load_pickle(path)
    expected = pickle.loads(content)  # what the standard unpickler makes of it (numpy may change byte order)
    assert isinstance(back, list) and len(back) == len(obj)
    for a, b in zip(back[:5], expected[:5], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert back[5] == np.float16(1.5) and back[6:] == obj[6:]


@FUZZ
@given(data=st.data())
def test_pickle_fuzz_truncations_and_flips_give_named_errors(tmp_path: Path, data: st.DataObject) -> None:
    """A cut or byte-flipped cache loads to plain data or raises PickleFileError naming the file; never
    another exception, a crash or a huge allocation."""
    protocol = data.draw(st.sampled_from([2, 4, 5]))
    obj = [[np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((2, 6))], [np.array([3]), 7, 1.5, "x"]]
    content = bytearray(pickle.dumps(obj, protocol=protocol))
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    path = _write(tmp_path / "fuzz.pkl", bytes(content))
    try:
        load_pickle(path)
    except PickleFileError as exc:
        assert str(exc).startswith(str(path))


# --------------------------------------------------------------------------------------------------
# ModelNet40 .dat caches and few-shot pickles (item 17)
# --------------------------------------------------------------------------------------------------


def _dat(root: Path, points: object, labels: object, split: str = "train") -> Path:
    path = root / f"modelnet40_{split}_8192pts_fps.dat"
    path.write_bytes(pickle.dumps([points, labels], protocol=4))
    return path


def _clouds(n: int = 4, p: int = 32, seed: int = 1) -> list[np.ndarray]:
    rng = _rng(seed)
    return [rng.uniform(-1, 1, (p, 6)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(
    ("label", "pattern"),
    [
        (np.array([1e30]), "labels[2] is 1e+30: labels must be in [0, 40)"),
        (1e30, "labels[2] is 1e+30"),
        (10**30, "labels[2] is 1000000000000000000000000000000"),
        (np.array([-1], np.int32), "labels[2] is -1"),
        (40, "labels[2] is 40"),
        (np.float64(np.nan), "labels[2] must be an integer label, got nan"),
        (2.5, "labels[2] must be an integer label, got 2.5"),
        (True, "labels[2] must be an integer label, got bool True"),
        (np.array([1, 2]), "labels[2] must be an integer label, got array of shape (2,)"),
        (None, "labels[2] must be an integer label, got NoneType"),
    ],
)
def test_dat_bad_label_names_file_and_index(tmp_path: Path, label: object, pattern: str) -> None:
    path = _dat(tmp_path, _clouds(), [np.array([1]), 3, label, np.int64(4)])
    with pytest.raises(ValueError, match=_named(path, pattern)):
        ModelNet40(tmp_path, num_points=16)


def test_dat_integral_float_labels_are_accepted(tmp_path: Path) -> None:
    _dat(tmp_path, _clouds(), [np.array([1.0]), 3.0, np.float32(39.0), np.uint8(0)])
    assert ModelNet40(tmp_path, num_points=16).labels.tolist() == [1, 3, 39, 0]


def test_dat_repeated_array_by_reference_is_refused_before_allocating(tmp_path: Path) -> None:
    cloud = _clouds(1, 64)[0]
    path = _dat(tmp_path, [cloud] * 20_000, [1] * 20_000)  # one array, 20000 references: a small file
    assert os.path.getsize(path) < 200_000
    with pytest.raises(
        ValueError, match=_named(path, "20000 shapes of 64 points", "repeats arrays by reference")
    ):
        ModelNet40(tmp_path, num_points=64)
    _dat(tmp_path, [cloud, cloud], [1, 2])  # an honest duplicate is fine
    assert len(ModelNet40(tmp_path, num_points=64)) == 2


@pytest.mark.parametrize(
    ("cloud", "pattern"),
    [
        (np.zeros((32, 6), dtype=bool), "points[1] must be a numeric array of shape (32, >=3)"),
        (np.zeros((32, 6), dtype=np.complex64), "points[1] must be a numeric array"),
        (np.zeros((32, 6, 1), np.float32), "points[1] must be a numeric array"),
        ([[0.0] * 6] * 32, "points[1] must be a numeric array"),
    ],
)
def test_dat_malformed_points(tmp_path: Path, cloud: object, pattern: str) -> None:
    clouds: list[object] = list(_clouds())
    clouds[1] = cloud
    path = _dat(tmp_path, clouds, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=_named(path, pattern)):
        ModelNet40(tmp_path, num_points=16)


def test_dat_zero_points_and_float32_overflow(tmp_path: Path) -> None:
    path = _dat(tmp_path, [np.zeros((0, 6), np.float32)] * 2, [0, 1])
    with pytest.raises(ValueError, match=_named(path, "shapes have 0 points, fewer than num_points=1")):
        ModelNet40(tmp_path, num_points=1)
    clouds = [c.astype(np.float64) for c in _clouds()]
    clouds[3][5, 0] = 1e39
    path = _dat(tmp_path, clouds, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=_named(path, "shape 3", "non-finite")):
        ModelNet40(tmp_path, num_points=16)


def test_dat_forged_array_is_a_named_value_error(tmp_path: Path) -> None:
    forged = b"\x80\x02]q\x00(cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85U\x01b\x87Rq\x01]q\x02e."
    path = _write(tmp_path / "modelnet40_train_8192pts_fps.dat", forged)
    with pytest.raises(ValueError, match=_named(path, "refused _reconstruct")):
        ModelNet40(tmp_path, num_points=16)


def _fewshot(root: Path, items: list) -> Path:
    path = root / "5way_10shot" / "0.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"train": items, "test": items}))
    return path


def test_fewshot_labels_and_min_points(tmp_path: Path) -> None:
    items = [(c, k % 5) for k, c in enumerate(_clouds(6))]
    path = _fewshot(tmp_path, [*items[:3], (items[3][0], 1e30), *items[4:]])
    with pytest.raises(ValueError, match=_named(path, "['train'][3][1] (label) is 1e+30", "[0, 5)")):
        ModelNet40FewShot(tmp_path)
    path = _fewshot(tmp_path, items)
    with pytest.raises(ValueError, match=_named(path, "shapes have 32 points, fewer than min_points=33")):
        ModelNet40FewShot(tmp_path, min_points=33)
    assert ModelNet40FewShot(tmp_path, min_points=32).points.shape == (6, 32, 3)
    with pytest.raises(TypeError, match="min_points must be an int >= 1, got str"):
        ModelNet40FewShot(tmp_path, min_points="32")


@FUZZ
@given(
    labels=st.lists(
        st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True)),
        min_size=1,
        max_size=6,
    )
)
def test_dat_fuzz_labels(tmp_path: Path, labels: list) -> None:
    """Labels load iff every one is an integer (or integral float) in [0, 40); else a named ValueError."""
    path = _dat(tmp_path, _clouds(len(labels), 8), labels)
    valid = all(isinstance(v, int) or (np.isfinite(v) and float(v).is_integer()) for v in labels) and all(
        0 <= v < 40 for v in labels if isinstance(v, int) or np.isfinite(v)
    )
    if valid:
        assert ModelNet40(tmp_path, num_points=8).labels.tolist() == [int(v) for v in labels]
    else:
        with pytest.raises(ValueError, match=_named(path, "labels[")):
            ModelNet40(tmp_path, num_points=8)


# --------------------------------------------------------------------------------------------------
# ModelNet40 text files (item 3)
# --------------------------------------------------------------------------------------------------


def _txt_root(tmp_path: Path, rows: list[np.ndarray], split: str = "train") -> tuple[Path, list[Path]]:
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir(exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    ids = [f"class{k % 40:02d}_{k:04d}" for k in range(len(rows))]
    (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    paths = []
    for shape_id, cloud in zip(ids, rows, strict=True):
        path = root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in cloud) + "\n")
        paths.append(path)
    return root, paths


def test_txt_fps_refusal_names_the_file_and_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pointpeft.ops

    real = pointpeft.ops.farthest_point_sample

    def refusing(xyz: torch.Tensor, num_samples: int, **kwargs: object) -> torch.Tensor:
        if xyz.abs().max() > 1e6:
            raise ValueError("xyz must have coordinates of magnitude at most 1e+06")
        return real(xyz, num_samples, **kwargs)

    monkeypatch.setattr(pointpeft.ops, "farthest_point_sample", refusing)
    clouds = [_rng(k).uniform(-1, 1, (24, 3)) for k in range(5)]
    clouds[3][7, 2] = 1e7
    root, paths = _txt_root(tmp_path, clouds)
    with pytest.raises(
        ValueError, match=_named(paths[3], "(shape 3)", "farthest point sampling refused", "1e+06")
    ):
        ModelNet40(root, source="txt", num_points=16)


def test_txt_coordinates_beyond_the_ops_bound_name_the_file(tmp_path: Path) -> None:
    # 1e20 is finite in float32 but its squared distances overflow: pointpeft.ops refuses it.
    clouds = [_rng(k).uniform(-1, 1, (24, 3)) for k in range(3)]
    clouds[1][0, 0] = 1e20
    root, paths = _txt_root(tmp_path, clouds)
    with pytest.raises(ValueError, match=_named(paths[1], "(shape 1)", "farthest point sampling refused")):
        ModelNet40(root, source="txt", num_points=16)


def test_txt_huge_num_points_is_refused_before_allocating(tmp_path: Path) -> None:
    root, paths = _txt_root(tmp_path, [_rng(k).uniform(-1, 1, (24, 3)) for k in range(3)])
    with pytest.raises(
        ValueError, match=_named(paths[0], "has 24 points, fewer than num_points=1000000000000")
    ):
        ModelNet40(root, source="txt", num_points=10**12)


@pytest.mark.parametrize("shape_id", ["class01_../../../etc/passwd", "..", "class01_a\\b"])
def test_txt_shape_id_must_be_a_plain_name(tmp_path: Path, shape_id: str) -> None:
    root, _ = _txt_root(tmp_path, [_rng(0).uniform(-1, 1, (24, 3))])
    (root / "modelnet40_train.txt").write_text(f"class00_0000\n{shape_id}\n")
    with pytest.raises(
        ValueError, match=_named(root / "modelnet40_train.txt", "line 2: shape id", "plain name")
    ):
        ModelNet40(root, source="txt", num_points=16)


def test_txt_class_name_must_be_a_plain_name(tmp_path: Path) -> None:
    root, _ = _txt_root(tmp_path, [_rng(0).uniform(-1, 1, (24, 3))])
    (root / "modelnet40_shape_names.txt").write_text("\n".join(["../up", *CLASSES[1:]]) + "\n")
    with pytest.raises(
        ValueError, match=_named(root / "modelnet40_shape_names.txt", "line 1: class name '../up'")
    ):
        ModelNet40(root, source="txt", num_points=16)


def test_txt_binary_file_is_named(tmp_path: Path) -> None:
    root, paths = _txt_root(tmp_path, [_rng(k).uniform(-1, 1, (24, 3)) for k in range(2)])
    paths[1].write_bytes(b"\xff\xfe\x00garbage" * 20)
    with pytest.raises(ValueError, match=_named(paths[1], "cannot be read")):
        ModelNet40(root, source="txt", num_points=16)


@pytest.mark.parametrize(
    ("points", "error", "pattern"),
    [
        ([[0.0, 0.0, 1.0], [1.0, 0.0]], TypeError, "points must be an array"),
        (
            np.array([["a", "b", "c"]] * 2),
            TypeError,
            "points must be an array of real numbers, got dtype <U1",
        ),
        (np.array([[0.0, 0.0, np.nan], [1.0, 0.0, 0.0]]), ValueError, "points must be finite"),
        (np.array([[0.0, 0.0, 1e200], [1.0, 0.0, -1e200]]), ValueError, "norms overflow float64"),
    ],
)
def test_pc_normalize_refuses_what_it_would_turn_into_nan_or_zeros(
    points: object, error: type, pattern: str
) -> None:
    from pointpeft.data.modelnet import pc_normalize

    with pytest.raises(error, match=pattern):
        pc_normalize(points)


def test_transforms_name_points_when_sampling_refuses_them() -> None:
    from pointpeft.data import sample_test_points, sample_train_points

    points = torch.randn(2, 32, 3)
    points[1, 4, 0] = 1e20
    with pytest.raises(
        ValueError, match=r"points \(B, N, 3\) cannot be sampled by farthest point sampling: .*1e\+18"
    ):
        sample_test_points(points, 8)
    with pytest.raises(ValueError, match=r"points \(B, N, 3\) cannot be sampled"):
        sample_train_points(points, 8, 16)


# --------------------------------------------------------------------------------------------------
# SyntheticShapes arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(num_points=MAX_NUM_POINTS + 1), f"num_points must be at most {MAX_NUM_POINTS}"),
        (dict(num_samples=MAX_NUM_SAMPLES + 1), "num_samples must be at most"),
        (dict(noise=1e300), r"noise must be at most 1000, got 1e\+300"),
        (dict(scale_range=(1e-300, 1.0)), r"scale_range must lie within \[1e-06, 1e\+06\]"),
        (dict(scale_range=(1.0, 1e300)), r"scale_range must lie within"),
    ],
)
def test_synthetic_refuses_values_that_would_overflow(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        SyntheticShapes(**kwargs)


@settings(max_examples=25, deadline=None)
@given(
    noise=st.floats(0, MAX_NOISE),
    scale=st.floats(*SCALE_BOUNDS),
    partial=st.floats(0, 0.9),
    clutter=st.floats(0, 0.9),
    index=st.integers(0, 13),
)
def test_synthetic_extreme_allowed_values_give_finite_normalised_clouds(
    noise, scale, partial, clutter, index
) -> None:
    ds = SyntheticShapes(
        14, 32, num_classes=14, noise=noise, scale_range=(scale, scale), partial=partial, clutter=clutter
    )
    points, label = ds[index]
    assert label == index and torch.isfinite(points).all()
    assert abs(float(points.norm(dim=1).max()) - 1.0) < 1e-5
