"""ScanObjectNN / ModelNet40 / ModelNet40 few-shot loaders and the restricted unpickler, on tiny files."""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pointpeft.data.modelnet import ModelNet40, ModelNet40FewShot, pc_normalize
from pointpeft.data.safe_pickle import ALLOWED_GLOBALS, load_pickle
from pointpeft.data.scanobjectnn import SCANOBJECTNN_FILES, ScanObjectNN
from pointpeft.ops import farthest_point_sample

h5py = pytest.importorskip("h5py")

CLASSES = ["airplane", "bathtub", "bed", "night_stand"] + [f"class{i:02d}" for i in range(36)]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_normalized(points: torch.Tensor) -> None:
    """Every cloud of ``points`` (M, P, 3) has centroid ~0 and maximum norm 1."""
    assert points.dtype == torch.float32
    torch.testing.assert_close(points.mean(dim=1), torch.zeros(points.shape[0], 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(points.norm(dim=2).amax(dim=1), torch.ones(points.shape[0]), atol=1e-5, rtol=0)


class _Evil:
    """Unpickling this would run ``os.system`` (touching ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


# --------------------------------------------------------------------------------------------------
# Restricted unpickler
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_pickle_numpy_roundtrip(tmp_path: Path, protocol: int) -> None:
    obj = {
        "arrays": [
            np.arange(12, dtype=np.float32).reshape(4, 3),
            np.array([3]),
            np.zeros((2, 2), np.float64),
        ],
        "scalar": np.int64(7),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "strided": np.arange(10, dtype=np.float32)[::2],
        "plain": (1, 2.5, "x", None, b"raw", [True]),
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = load_pickle(path)
    assert isinstance(back, dict)
    for a, b in zip(back["arrays"], obj["arrays"], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert back["scalar"] == 7 and isinstance(back["scalar"], np.int64)
    np.testing.assert_array_equal(back["fortran"], obj["fortran"])
    np.testing.assert_array_equal(back["strided"], obj["strided"])
    assert back["plain"] == obj["plain"]


def test_load_pickle_accepts_numpy1_module_names(tmp_path: Path) -> None:
    # Protocol 2 names globals as text, so numpy 2's "numpy._core" can be rewritten to numpy 1's "numpy.core".
    data = pickle.dumps([np.ones((3, 6), np.float32), np.array([5]), np.float32(2.0)], protocol=2)
    data = data.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data
    path = tmp_path / "np1.pkl"
    path.write_bytes(data)
    points, label, scalar = load_pickle(path)
    np.testing.assert_array_equal(points, np.ones((3, 6), np.float32))
    assert label.tolist() == [5] and scalar == 2.0


def test_load_pickle_refuses_os_system_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([[np.zeros((2, 3))], _Evil(marker)], protocol=2))
    with pytest.raises(pickle.UnpicklingError) as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    assert f"{os.system.__module__}.system" in str(info.value)  # posix.system / nt.system
    assert not marker.exists()


@pytest.mark.parametrize("obj", [_EvalEvil(), {"a": __import__("collections").OrderedDict()}])
def test_load_pickle_refuses_other_globals(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(pickle.UnpicklingError, match="refused to load the global"):
        load_pickle(path)


@pytest.mark.parametrize("encoding", [b"utf-8", b"rot13"])
def test_load_pickle_codecs_encode_is_latin1_only(tmp_path: Path, encoding: bytes) -> None:
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nV" + encoding + b"\ntR.")  # _codecs.encode("abc", encoding)
    with pytest.raises(pickle.UnpicklingError, match="only the latin1 encoding") as info:
        load_pickle(path)
    assert str(info.value).startswith(str(path))
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVlatin1\ntR.")
    assert load_pickle(path) == b"abc"


def test_load_pickle_corrupt_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps([np.zeros((4, 3))])[:-5])
    with pytest.raises(pickle.UnpicklingError, match="not a valid pickle") as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_pickle(tmp_path / "nope.pkl")
    assert ("numpy", "ndarray") in ALLOWED_GLOBALS and ("os", "system") not in ALLOWED_GLOBALS


# --------------------------------------------------------------------------------------------------
# ScanObjectNN
# --------------------------------------------------------------------------------------------------


def _write_h5(path: Path, **datasets: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return path


def _scan_file(root: Path, variant: str = "OBJ_BG", split: str = "train") -> Path:
    return root / SCANOBJECTNN_FILES[variant][split]


@pytest.mark.parametrize("variant", ["OBJ_BG", "OBJ_ONLY", "PB_T50_RS"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_scanobjectnn_reads_each_variant(tmp_path: Path, variant: str, split: str) -> None:
    data = (_rng(1).standard_normal((5, 32, 3)) * 3).astype(np.float64)
    label = np.array([0, 14, 3, 3, 7], dtype=np.uint8)
    _write_h5(
        _scan_file(tmp_path, variant, split), data=data, label=label[:, None] if split == "test" else label
    )
    ds = ScanObjectNN(tmp_path, variant=variant.lower() if variant == "OBJ_ONLY" else variant, split=split)
    assert ds.num_classes == 15 and len(ds) == 5 and ds.variant == variant
    assert ds.points.shape == (5, 32, 3) and ds.points.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == label.tolist()
    torch.testing.assert_close(ds.points, torch.from_numpy(data.astype(np.float32)))  # raw, not normalised
    pts, lab = ds[1]
    assert pts.shape == (32, 3) and pts.dtype == torch.float32 and lab == 14 and type(lab) is int


def test_scanobjectnn_argument_and_missing_file_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"variant must be one of \['OBJ_BG', 'OBJ_ONLY', 'PB_T50_RS'\].*'PB_T25'"
    ):
        ScanObjectNN(tmp_path, variant="PB_T25")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        ScanObjectNN(tmp_path, split="val")
    with pytest.raises(FileNotFoundError) as info:
        ScanObjectNN(tmp_path, variant="OBJ_ONLY", split="test")
    msg = str(info.value)
    assert str(_scan_file(tmp_path, "OBJ_ONLY", "test")) in msg and "OBJ_ONLY" in msg and "test" in msg
    with pytest.raises(FileNotFoundError, match="root directory .* does not exist"):
        ScanObjectNN(tmp_path / "missing")


def _scan_error(tmp_path: Path, **datasets: object) -> str:
    path = _write_h5(_scan_file(tmp_path), **datasets)
    with pytest.raises(ValueError) as info:
        ScanObjectNN(tmp_path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_scanobjectnn_wrong_keys(tmp_path: Path) -> None:
    msg = _scan_error(tmp_path, points=np.zeros((2, 8, 3)), label=np.zeros(2, np.int64))
    assert "'data'" in msg and "['label', 'points']" in msg


@pytest.mark.parametrize("shape", [(2, 8, 4), (2, 8), (16, 3)])
def test_scanobjectnn_wrong_data_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    msg = _scan_error(tmp_path, data=np.zeros(shape), label=np.zeros(2, np.int64))
    assert "(M, P, 3)" in msg and str(shape) in msg


def test_scanobjectnn_label_count_mismatch(tmp_path: Path) -> None:
    msg = _scan_error(tmp_path, data=np.ones((3, 8, 3)), label=np.zeros(2, np.int64))
    assert "(3,)" in msg and "(2,)" in msg


@pytest.mark.parametrize("bad", [15, -1])
def test_scanobjectnn_label_out_of_range(tmp_path: Path, bad: int) -> None:
    msg = _scan_error(tmp_path, data=np.ones((3, 8, 3)), label=np.array([0, bad, 2]))
    assert "[0, 15)" in msg and str(bad) in msg


def test_scanobjectnn_non_integer_labels(tmp_path: Path) -> None:
    msg = _scan_error(tmp_path, data=np.ones((2, 8, 3)), label=np.array([0.0, 1.5]))
    assert "integers" in msg and "1.5" in msg


def test_scanobjectnn_non_finite(tmp_path: Path) -> None:
    data = np.ones((3, 8, 3))
    data[2, 4, 1] = np.nan
    msg = _scan_error(tmp_path, data=data, label=np.zeros(3, np.int64))
    assert "non-finite" in msg and "[2]" in msg


def test_scanobjectnn_not_hdf5(tmp_path: Path) -> None:
    path = _scan_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("not hdf5")
    with pytest.raises(ValueError, match="cannot be read as an HDF5 file") as info:
        ScanObjectNN(tmp_path)
    assert str(path) in str(info.value)


def test_scanobjectnn_without_h5py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_h5(_scan_file(tmp_path), data=np.ones((1, 4, 3)), label=np.zeros(1, np.int64))
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes "import h5py" raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'pointpeft\[data\]'"):
        ScanObjectNN(tmp_path)


# --------------------------------------------------------------------------------------------------
# ModelNet40: text files
# --------------------------------------------------------------------------------------------------


def _write_rows(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")


def _modelnet_txt_root(tmp_path: Path, rows: int = 40) -> tuple[Path, dict[str, np.ndarray]]:
    """A root with shape names, train/test lists and one text file (rows, 6) per listed shape."""
    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "modelnet40_normal_resampled"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    splits = {
        "train": ["airplane_0001", "night_stand_0002", "class35_0003", "airplane_0004"],
        "test": ["bed_0005", "bathtub_0006"],
    }
    raw: dict[str, np.ndarray] = {}
    rng = _rng(2)
    for split, ids in splits.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n\n")
        for shape_id in ids:
            cls = shape_id.rsplit("_", 1)[0]
            data = np.concatenate([rng.uniform(-5, 5, (rows, 3)) + 3.0, rng.standard_normal((rows, 3))], 1)
            _write_rows(root / cls / f"{shape_id}.txt", data)
            raw[shape_id] = np.loadtxt(root / cls / f"{shape_id}.txt", delimiter=",")[:, :3].astype(
                np.float32
            )
    return root, raw


def test_modelnet40_txt_fps_and_normalization(tmp_path: Path) -> None:
    root, raw = _modelnet_txt_root(tmp_path)
    ds = ModelNet40(root, split="train", source="auto", num_points=32)
    assert ds.source == "txt" and ds.num_classes == 40 and ds.classes == CLASSES
    assert ds.points.shape == (4, 32, 3) and ds.points.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 3, 39, 0]
    _assert_normalized(ds.points)
    # Each shape: FPS (from row 0) of the raw xyz down to 32 points, then pc_normalize.
    xyz = torch.from_numpy(raw["night_stand_0002"])
    idx = farthest_point_sample(xyz[None], 32)[0]
    expected = torch.from_numpy(pc_normalize(xyz[idx].numpy()))
    torch.testing.assert_close(ds.points[1], expected, atol=1e-6, rtol=0)
    pts, label = ds[2]
    assert pts.shape == (32, 3) and label == 39 and type(label) is int

    test = ModelNet40(root, split="test", source="txt", num_points=40)  # as many rows as points: no FPS
    assert test.labels.tolist() == [2, 1]
    torch.testing.assert_close(
        test.points[0], torch.from_numpy(pc_normalize(raw["bed_0005"])), atol=1e-6, rtol=0
    )


def test_modelnet40_txt_many_shapes_batched_fps(tmp_path: Path) -> None:
    """More shapes than one FPS batch, of two row counts, with the progress bar on: same as one by one."""
    root, _ = _modelnet_txt_root(tmp_path)
    rng = _rng(9)
    ids, raw = [], []
    for k in range(70):
        shape_id = f"bed_{k + 100:04d}"
        rows = rng.standard_normal((20 + k % 2, 3)).astype(np.float32)
        _write_rows(root / "bed" / f"{shape_id}.txt", rows)
        ids.append(shape_id)
        raw.append(
            torch.from_numpy(np.loadtxt(root / "bed" / f"{shape_id}.txt", delimiter=",").astype(np.float32))
        )
    (root / "modelnet40_train.txt").write_text("\n".join(ids))
    ds = ModelNet40(root, source="txt", num_points=16)
    assert ds.points.shape == (70, 16, 3) and ds.labels.tolist() == [2] * 70
    for k in (0, 33, 69):
        expected = raw[k][farthest_point_sample(raw[k][None], 16)[0]]
        torch.testing.assert_close(
            ds.points[k], torch.from_numpy(pc_normalize(expected.numpy())), atol=1e-6, rtol=0
        )


def test_modelnet40_argument_errors(tmp_path: Path) -> None:
    root, _ = _modelnet_txt_root(tmp_path)
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'valid'"):
        ModelNet40(root, split="valid")
    with pytest.raises(ValueError, match=r"source must be one of \['auto', 'txt', 'dat'\], got 'h5'"):
        ModelNet40(root, source="h5")
    with pytest.raises(ValueError, match="num_points must be >= 1, got 0"):
        ModelNet40(root, num_points=0)


def test_modelnet40_missing_files(tmp_path: Path) -> None:
    root, _ = _modelnet_txt_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="root directory not found: .*nowhere"):
        ModelNet40(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"modelnet40_test_8192pts_fps\.dat"):
        ModelNet40(root, split="test", source="dat")
    os.remove(root / "bed" / "bed_0005.txt")
    with pytest.raises(FileNotFoundError, match=r"bed_0005\.txt") as info:
        ModelNet40(root, split="test", num_points=32)
    assert str(root / "modelnet40_test.txt") in str(info.value)
    os.remove(root / "modelnet40_train.txt")
    with pytest.raises(FileNotFoundError, match=r"modelnet40_train\.txt"):
        ModelNet40(root, num_points=32)
    os.remove(root / "modelnet40_shape_names.txt")
    with pytest.raises(FileNotFoundError, match=r"modelnet40_shape_names\.txt"):
        ModelNet40(root, split="test", num_points=32)


def test_modelnet40_bad_shape_names(tmp_path: Path) -> None:
    root, _ = _modelnet_txt_root(tmp_path)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES[:39]) + "\n")
    with pytest.raises(ValueError, match="expected 40 distinct class names.*got 39") as info:
        ModelNet40(root, num_points=32)
    assert "modelnet40_shape_names.txt" in str(info.value)


def test_modelnet40_unknown_class(tmp_path: Path) -> None:
    root, _ = _modelnet_txt_root(tmp_path)
    (root / "modelnet40_test.txt").write_text("bed_0005\nsofa_0001\n")
    with pytest.raises(
        ValueError, match=r"line 2: shape id 'sofa_0001' names the unknown class 'sofa'"
    ) as info:
        ModelNet40(root, split="test", num_points=32)
    assert str(root / "modelnet40_test.txt") in str(info.value)


def _txt_error(tmp_path: Path, content: str, num_points: int = 4) -> str:
    root, _ = _modelnet_txt_root(tmp_path)
    path = root / "bathtub" / "bathtub_0006.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        ModelNet40(root, split="test", num_points=num_points)
    assert str(path) in str(info.value)
    return str(info.value)


def test_modelnet40_txt_too_few_columns(tmp_path: Path) -> None:
    msg = _txt_error(tmp_path, "".join(f"{i}.0,1.0\n" for i in range(8)))
    assert "(N, >=3)" in msg and "(8, 2)" in msg


def test_modelnet40_txt_ragged_or_garbage(tmp_path: Path) -> None:
    assert "comma-separated" in _txt_error(tmp_path, "1,2,3\n4,5\n1,2,3\n4,5,6\n")
    assert "comma-separated" in _txt_error(tmp_path, "a,b,c\n")


def test_modelnet40_txt_non_finite(tmp_path: Path) -> None:
    rows = "".join(f"{i}.0,1.0,2.0,0,0,1\n" for i in range(5)) + "nan,1.0,2.0,0,0,1\n"
    msg = _txt_error(tmp_path, rows)
    assert "non-finite" in msg and "[6]" in msg


def test_modelnet40_txt_too_few_points_empty_and_degenerate(tmp_path: Path) -> None:
    assert "fewer than num_points=8" in _txt_error(tmp_path, "1,2,3\n4,5,6\n", num_points=8)
    assert "no points" in _txt_error(tmp_path, "\n")
    assert "all points of the shape are equal" in _txt_error(tmp_path, "1,2,3\n" * 6)


# --------------------------------------------------------------------------------------------------
# ModelNet40: .dat cache
# --------------------------------------------------------------------------------------------------


def _write_dat(root: Path, split: str, points: list, labels: list, protocol: int = 4) -> Path:
    path = root / f"modelnet40_{split}_8192pts_fps.dat"
    with open(path, "wb") as f:
        pickle.dump([points, labels], f, protocol=protocol)
    return path


def _dat_content(n: int = 5, p: int = 64, seed: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = _rng(seed)
    points = [(rng.uniform(-2, 2, (p, 6)) + 10).astype(np.float32) for _ in range(n)]
    labels = [np.array([k * 9 % 40], dtype=np.int32) for k in range(n)]
    return points, labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_modelnet40_dat(tmp_path: Path, protocol: int) -> None:
    points, labels = _dat_content()
    _write_dat(tmp_path, "train", points, labels, protocol)
    ds = ModelNet40(tmp_path, split="train", num_points=48)  # auto -> dat; no shape names file
    assert ds.source == "dat" and ds.classes is None and len(ds) == 5
    assert ds.points.shape == (5, 48, 3) and ds.points.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [int(lab[0]) for lab in labels]
    _assert_normalized(ds.points)
    torch.testing.assert_close(
        ds.points[3], torch.from_numpy(pc_normalize(points[3][:48, :3])), atol=1e-6, rtol=0
    )
    pts, label = ds[4]
    assert pts.shape == (48, 3) and label == 36


def test_modelnet40_dat_with_shape_names_and_auto_preference(tmp_path: Path) -> None:
    root, _ = _modelnet_txt_root(tmp_path)
    points, labels = _dat_content(n=3, p=64)
    _write_dat(root, "test", points, labels)
    ds = ModelNet40(root, split="test", num_points=64)
    assert ds.source == "dat" and ds.classes == CLASSES and ds.points.shape == (3, 64, 3)
    assert ModelNet40(root, split="test", source="txt", num_points=32).source == "txt"


def _dat_error(tmp_path: Path, obj: object, num_points: int = 16) -> str:
    path = tmp_path / "modelnet40_train_8192pts_fps.dat"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError) as info:
        ModelNet40(tmp_path, source="dat", num_points=num_points)
    assert str(path) in str(info.value)
    return str(info.value)


def test_modelnet40_dat_structure_errors(tmp_path: Path) -> None:
    points, labels = _dat_content(n=3, p=32)
    assert "2-element list" in _dat_error(tmp_path, {"points": points})
    assert "3 entries but the list of labels 2" in _dat_error(tmp_path, [points, labels[:2]])
    assert "no shapes" in _dat_error(tmp_path, [[], []])
    assert "fewer than num_points=64" in _dat_error(tmp_path, [points, labels], num_points=64)
    assert "integer label" in _dat_error(tmp_path, [points, [*labels[:2], "chair"]])


@pytest.mark.parametrize(
    ("bad", "received"),
    [
        (np.zeros((32, 2), np.float32), "(32, 2)"),
        (np.zeros((31, 6), np.float32), "(31, 6)"),
        ([1, 2], "list"),
    ],
)
def test_modelnet40_dat_wrong_point_shape(tmp_path: Path, bad: object, received: str) -> None:
    points, labels = _dat_content(n=3, p=32)
    msg = _dat_error(tmp_path, [[points[0], bad, points[2]], labels])
    assert "points[1]" in msg and "(32, >=3)" in msg and received in msg


def test_modelnet40_dat_label_out_of_range(tmp_path: Path) -> None:
    points, labels = _dat_content(n=3, p=32)
    msg = _dat_error(tmp_path, [points, [labels[0], np.array([40]), np.array([-2])]])
    assert "[0, 40)" in msg and "-2, 40" in msg


def test_modelnet40_dat_non_finite(tmp_path: Path) -> None:
    points, labels = _dat_content(n=3, p=32)
    points[1][5, 2] = np.inf
    msg = _dat_error(tmp_path, [points, labels])
    assert "shape 1" in msg and "non-finite" in msg


def test_modelnet40_dat_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    points, labels = _dat_content(n=2, p=32)
    path = tmp_path / "modelnet40_train_8192pts_fps.dat"
    path.write_bytes(pickle.dumps([points, [labels[0], _Evil(marker)]]))
    with pytest.raises(pickle.UnpicklingError, match="system") as info:
        ModelNet40(tmp_path, num_points=16)
    assert str(path) in str(info.value) and not marker.exists()


# --------------------------------------------------------------------------------------------------
# ModelNet40 few-shot
# --------------------------------------------------------------------------------------------------


def _fewshot_items(n: int, way: int, seed: int) -> list[tuple]:
    rng = _rng(seed)
    items = []
    for k in range(n):
        pts = (rng.standard_normal((48, 6)) * 4 - 1).astype(np.float32)
        label = k % way if k % 2 else np.int64(k % way)  # python and numpy ints both occur
        items.append((pts, label, f"shape_{k}"))
    return items


def _write_fewshot(root: Path, way: int, shot: int, fold: int, content: object) -> Path:
    path = root / f"{way}way_{shot}shot" / f"{fold}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f)
    return path


@pytest.mark.parametrize(("way", "shot", "fold"), [(5, 10, 0), (10, 20, 9)])
def test_modelnet40_fewshot(tmp_path: Path, way: int, shot: int, fold: int) -> None:
    content = {"train": _fewshot_items(way * 2, way, 4), "test": _fewshot_items(6, way, 5)}
    _write_fewshot(tmp_path, way, shot, fold, content)
    for split in ("train", "test"):
        ds = ModelNet40FewShot(tmp_path, way=way, shot=shot, fold=fold, split=split)
        items = content[split]
        assert ds.num_classes == way and len(ds) == len(items)
        assert ds.points.shape == (len(items), 48, 3) and ds.points.dtype == torch.float32
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [int(item[1]) for item in items]
        _assert_normalized(ds.points)
        torch.testing.assert_close(
            ds.points[1], torch.from_numpy(pc_normalize(items[1][0][:, :3])), atol=1e-6, rtol=0
        )
        pts, label = ds[0]
        assert pts.shape == (48, 3) and label == 0 and type(label) is int


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"way": 7}, r"way must be one of \[5, 10\], got 7"),
        ({"shot": 5}, r"shot must be one of \[10, 20\], got 5"),
        ({"fold": 10}, r"fold must be one of \[0, 1, .*9\], got 10"),
        ({"fold": True}, r"fold must be one of .*got True"),
        ({"way": "5"}, r"way must be one of .*got '5'"),
        ({"split": "val"}, r"split must be one of \['train', 'test'\], got 'val'"),
    ],
)
def test_modelnet40_fewshot_argument_errors(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ModelNet40FewShot(tmp_path, **kwargs)


def test_modelnet40_fewshot_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root directory not found"):
        ModelNet40FewShot(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        ModelNet40FewShot(tmp_path, way=10, shot=20, fold=3)
    assert str(tmp_path / "10way_20shot" / "3.pkl") in str(info.value)


def _fewshot_error(tmp_path: Path, content: object, way: int = 5) -> str:
    path = _write_fewshot(tmp_path, way, 10, 0, content)
    with pytest.raises(ValueError) as info:
        ModelNet40FewShot(tmp_path, way=way, shot=10, fold=0, split="train")
    assert str(path) in str(info.value)
    return str(info.value)


def test_modelnet40_fewshot_structure_errors(tmp_path: Path) -> None:
    items = _fewshot_items(4, 5, 6)
    assert "keys 'train' and 'test'" in _fewshot_error(tmp_path, {"support": items})
    assert "list of length 2" in _fewshot_error(tmp_path, [items, items])
    assert "non-empty list" in _fewshot_error(tmp_path, {"train": [], "test": items})
    assert "tuple (points, label, ...)" in _fewshot_error(tmp_path, {"train": [items[0], items[1][:1]]})
    bad_shape = [items[0], (np.zeros((48, 2), np.float32), 1)]
    msg = _fewshot_error(tmp_path, {"train": bad_shape})
    assert "['train'][1][0]" in msg and "(48, >=3)" in msg and "(48, 2)" in msg
    assert "integer label" in _fewshot_error(tmp_path, {"train": [(items[0][0], 1.5)]})


def test_modelnet40_fewshot_label_out_of_range(tmp_path: Path) -> None:
    items = _fewshot_items(3, 5, 7)
    items[2] = (items[2][0], 5)
    msg = _fewshot_error(tmp_path, {"train": items, "test": items})
    assert "[0, 5)" in msg and "values 5" in msg


def test_modelnet40_fewshot_non_finite(tmp_path: Path) -> None:
    items = _fewshot_items(3, 5, 8)
    items[1][0][0, 0] = np.nan
    msg = _fewshot_error(tmp_path, {"train": items, "test": items})
    assert "['train'][1]" in msg and "non-finite" in msg


def test_modelnet40_fewshot_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write_fewshot(tmp_path, 5, 10, 0, {"train": [(np.zeros((4, 3)), _Evil(marker))], "test": []})
    with pytest.raises(pickle.UnpicklingError, match="system") as info:
        ModelNet40FewShot(tmp_path)
    assert str(path) in str(info.value) and not marker.exists()
