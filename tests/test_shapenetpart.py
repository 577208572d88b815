"""ShapeNetPart on files in the real layout, written here: categories, splits, items (sampling, the
normalisation of the whole shape, parts), and malformed files refused naming the file and row."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from pointpeft.data import ShapeNetPart

SYNSETS = {"Airplane": "02691156", "Mug": "03797390"}


def _write(root: pathlib.Path, shapes: dict[str, list[tuple[str, np.ndarray]]], splits: dict[str, list[str]]):
    root.mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{n}\t{s}\n" for n, s in SYNSETS.items()))
    for name, items in shapes.items():
        folder = root / SYNSETS[name]
        folder.mkdir(exist_ok=True)
        for token, rows in items:
            np.savetxt(folder / f"{token}.txt", rows, fmt="%.6f")
    (root / "train_test_split").mkdir(exist_ok=True)
    for split, tokens in splits.items():
        entries = [f"shape_data/{SYNSETS[n]}/{t}" for n, t in (x.split(":") for x in tokens)]
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))


def _rows(rng, count, parts, offset=0.0):
    xyz = rng.standard_normal((count, 3)) * 3 + offset
    normals = rng.standard_normal((count, 3))
    return np.concatenate([xyz, normals, rng.choice(parts, count)[:, None].astype(float)], axis=1)


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {
        "Airplane": [("a1", _rows(rng, 40, [0, 1, 2, 3], 5.0)), ("a2", _rows(rng, 30, [0, 3]))],
        "Mug": [("m1", _rows(rng, 25, [36, 37], -2.0))],
    }
    _write(tmp_path, shapes, {"train": ["Airplane:a1", "Mug:m1"], "val": ["Airplane:a2"], "test": ["Mug:m1"]})
    return tmp_path


def test_splits_items_and_the_reference_normalisation(root):
    trainval = ShapeNetPart(root, "trainval", npoints=64)
    assert trainval.categories == ["Airplane", "Mug"] and len(trainval) == 3
    assert [c for c, _ in trainval.shapes] == [0, 1, 0] and len(ShapeNetPart(root, "test", npoints=8)) == 1
    points, category, parts = trainval[1]
    assert points.shape == (64, 3) and points.dtype == torch.float32 and category == 1
    assert parts.dtype == torch.int64 and set(parts.tolist()) <= {36, 37}
    rows = np.loadtxt(root / SYNSETS["Mug"] / "m1.txt")
    xyz = rows[:, :3] - rows[:, :3].mean(0)
    xyz /= np.sqrt((xyz**2).sum(1)).max()  # the whole shape normalised, then sampled
    for point, part in zip(points.double(), parts, strict=True):
        matches = np.flatnonzero(np.abs(xyz - point.numpy()).max(1) < 1e-6)
        assert matches.size and part.item() in rows[matches, 6]
    again = trainval[1]
    assert torch.equal(again[0], points) and torch.equal(again[2], parts)  # same at every access
    with_normals = ShapeNetPart(root, "trainval", npoints=64, normals=True)[1][0]
    assert with_normals.shape == (64, 6) and torch.equal(with_normals[:, :3], points)


def test_malformed_files_are_named(root):
    rows = np.loadtxt(root / SYNSETS["Mug"] / "m1.txt")
    rows[3, 6] = 5  # an Airplane part in a Mug
    np.savetxt(root / SYNSETS["Mug"] / "m1.txt", rows)
    with pytest.raises(
        ValueError, match=r"m1\.txt: row 4 has part label 5\.0, not one of the Mug parts \[36, 37\]"
    ):
        ShapeNetPart(root, "test")[0]
    np.savetxt(root / SYNSETS["Mug"] / "m1.txt", rows[:, :6])
    with pytest.raises(ValueError, match=r"m1\.txt: rows must be 7 numbers"):
        ShapeNetPart(root, "test")[0]
    (root / SYNSETS["Mug"] / "m1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"shape 0 \(Mug\): file not found: .*m1\.txt"):
        ShapeNetPart(root, "test")[0]
    (root / "train_test_split" / "shuffled_val_file_list.json").write_text('["shape_data/99999999/x"]')
    with pytest.raises(ValueError, match=r"shuffled_val_file_list\.json: entry 0 must be"):
        ShapeNetPart(root, "val")
    (root / "synsetoffset2category.txt").write_text("Spaceship\t1\n")
    with pytest.raises(ValueError, match=r"synsetoffset2category\.txt:1: expected 'Name<TAB>synset'"):
        ShapeNetPart(root)
    with pytest.raises(ValueError, match=r"split must be one of"):
        ShapeNetPart(root, "everything")
    with pytest.raises(FileNotFoundError, match=r"root directory not found"):
        ShapeNetPart(root / "nowhere")
