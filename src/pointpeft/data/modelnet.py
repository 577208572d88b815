"""ModelNet40 (full and few-shot) in the layouts of the Point-MAE family.

* :class:`ModelNet40` reads ``modelnet40_normal_resampled/``: either the per-shape text files
  (``<class>/<shape_id>.txt``, rows ``x,y,z,nx,ny,nz``) listed by ``modelnet40_{train,test}.txt``, or the
  cached ``modelnet40_{train,test}_8192pts_fps.dat`` pickles (points already reduced to 8192 by farthest
  point sampling).
* :class:`ModelNet40FewShot` reads ``{way}way_{shot}shot/{fold}.pkl`` (Point-MAE's ``ModelNetFewshot``).

Only xyz is kept, and every shape is normalised into the unit sphere (:func:`pc_normalize`), as the
reference loaders do. Pickles are read with :func:`pointpeft.data.safe_pickle.load_pickle`, which runs no
code from the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.checks import check_choice, check_int, check_path, check_positive_int
from pointpeft.data.checks import check_clouds_finite, check_labels, describe
from pointpeft.data.safe_pickle import load_pickle

__all__ = ["ModelNet40", "ModelNet40FewShot", "pc_normalize"]

_SPLITS = ("train", "test")
_SOURCES = ("auto", "txt", "dat")
_FEWSHOT_WAYS = (5, 10)
_FEWSHOT_SHOTS = (10, 20)
_FEWSHOT_FOLDS = tuple(range(10))
_SHAPE_NAMES = "modelnet40_shape_names.txt"
_FPS_BATCH = 32  # text-file shapes reduced by one farthest point sampling call
_NORMALIZE_CHUNK = 512  # shapes normalised at a time (bounds the float64 temporaries)
_PROGRESS_MIN_FILES = 50
_MIN_ROW_BYTES = 6  # the shortest text row of a point: "0,0,0\n"
#: A pickle's shapes may need at most this many bytes of float32 xyz per byte of the file: honest caches
#: (float32 rows of 6 values) need half a byte; more means the file repeats one array many times by
#: reference (a few bytes each), which would make the loader allocate far more than the file holds.
_MAX_BYTES_PER_FILE_BYTE = 4


def _center_and_scale(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred float64 clouds (..., P, 3) and their maximum norms (..., 1, 1)."""
    arr = np.asarray(points, dtype=np.float64)
    centered = arr - arr.mean(axis=-2, keepdims=True)
    scale = np.sqrt((centered * centered).sum(axis=-1, keepdims=True)).max(axis=-2, keepdims=True)
    return centered, scale


def pc_normalize(points: np.ndarray) -> np.ndarray:
    """Centre a cloud on its centroid and scale it into the unit sphere (the reference's ``pc_normalize``).

    Args:
        points: array (..., P, 3) of one cloud (P, 3) or a batch of clouds; each cloud is normalised
            on its own. Must be finite, and no cloud may have all its points equal.

    Returns:
        float32 array of the same shape: ``(p - mean(p)) / max_i ||p_i - mean(p)||``, so that every cloud
        has centroid 0 and maximum L2 norm 1 (computed in float64).

    Raises:
        TypeError: if ``points`` is not an array (or nested sequence) of real numbers.
        ValueError: if ``points`` does not have shape (..., P, 3) with P >= 1, is not finite, is so large
            that its norms overflow float64, or a cloud is degenerate (all points equal, so it has no scale).
    """
    try:
        arr = np.asarray(points)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(
            f"points must be an array (..., P, 3) of real numbers, got {describe(points)} ({exc})"
        ) from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"points must be an array of real numbers, got dtype {arr.dtype}")
    shape = arr.shape
    if len(shape) < 2 or shape[-1] != 3 or shape[-2] < 1:
        raise ValueError(f"points must have shape (..., P, 3) with P >= 1, got {shape}")
    if not np.isfinite(arr).all():
        raise ValueError("points must be finite, got NaN or inf coordinates")
    with np.errstate(over="ignore", invalid="ignore"):
        centered, scale = _center_and_scale(arr)
    if not np.isfinite(scale).all():
        raise ValueError(
            "points are too large to normalise: their norms overflow float64 (rescale them first)"
        )
    if not (scale > 0).all():
        raise ValueError("cannot normalise a point cloud whose points are all equal (it has no scale)")
    return (centered / scale).astype(np.float32)


def _normalize_inplace(points: np.ndarray, name_of: Callable[[int], str]) -> None:
    """Apply :func:`pc_normalize` to every cloud of ``points`` (M, P, 3) float32, in chunks, in place."""
    for start in range(0, points.shape[0], _NORMALIZE_CHUNK):
        chunk = points[start : start + _NORMALIZE_CHUNK]
        centered, scale = _center_and_scale(chunk)
        degenerate = np.flatnonzero(~(scale.reshape(-1) > 0))
        if degenerate.size:
            raise ValueError(
                f"{name_of(start + int(degenerate[0]))}: all points of the shape are equal, so it cannot be "
                "normalised into the unit sphere"
            )
        chunk[...] = centered / scale


def _label_number(value: object) -> int | float | None:
    """The number in a pickled label (an int or float, a numpy scalar, or a numpy array of one number),
    as a Python int or float (any size: range checks come later); None if it is not one number."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        value = value.reshape(()).item()
    elif isinstance(value, np.generic) and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _stack_clouds(
    clouds: Sequence[object], path: str, what: str, *, need: int, need_name: str, keep: int | None
) -> np.ndarray:
    """Validate the numpy clouds (P, >=3) of a pickle and stack their xyz.

    Every cloud must have the P rows of the first one, P >= ``need`` (the argument ``need_name``);
    the first ``keep`` rows are kept (all when None). The output is allocated only once it is known to
    be at most :data:`_MAX_BYTES_PER_FILE_BYTE` times the file size.

    Returns:
        float32 array (M, keep or P, 3).
    """
    first = clouds[0]
    if not isinstance(first, np.ndarray) or first.ndim != 2:
        raise ValueError(
            f"{path}: {what.format(0)} must be an array of shape (P, >=3), got {describe(first)}"
        )
    num_rows = first.shape[0]
    if num_rows < need:
        raise ValueError(f"{path}: shapes have {num_rows} points, fewer than {need_name}={need}")
    rows = num_rows if keep is None else keep
    needed, file_size = len(clouds) * rows * 3 * 4, os.path.getsize(path)
    if needed > _MAX_BYTES_PER_FILE_BYTE * file_size:
        raise ValueError(
            f"{path}: {len(clouds)} shapes of {rows} points would take {needed} bytes as float32, more than "
            f"{_MAX_BYTES_PER_FILE_BYTE} times the file size ({file_size} bytes): the file repeats arrays by "
            "reference (a corrupt or hostile cache)"
        )
    out = np.empty((len(clouds), rows, 3), dtype=np.float32)
    with np.errstate(
        over="ignore", invalid="ignore"
    ):  # values too large for float32 become inf: reported later
        for i, cloud in enumerate(clouds):
            if (
                not isinstance(cloud, np.ndarray)
                or cloud.ndim != 2
                or cloud.shape[0] != num_rows
                or cloud.shape[1] < 3
                or cloud.dtype.kind not in "iuf"
            ):
                raise ValueError(
                    f"{path}: {what.format(i)} must be a numeric array of shape ({num_rows}, >=3) (the point "
                    f"count of the first shape), got {describe(cloud)}"
                )
            out[i] = cloud[:rows, :3]
    return out


def _collect_labels(values: Sequence[object], num_classes: int, path: str, what: str) -> np.ndarray:
    """int64 labels (M,) in [0, num_classes) from the pickled label objects ``values``."""
    numbers = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        number = _label_number(value)
        if number is None:
            raise ValueError(f"{path}: {what.format(i)} must be an integer label, got {describe(value)}")
        numbers[i] = number
    return check_labels(numbers, num_classes, lambda i: f"{path}: {what.format(i)}")


def _check_root(root: str | os.PathLike[str], name: str) -> str:
    root_str = check_path("root", root, what="the dataset folder")
    if not os.path.isdir(root_str):
        raise FileNotFoundError(f"{name} root directory not found: {root_str}")
    return root_str


def _read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a text file."""
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from exc


def _check_plain_name(name: str, path: str, line: int, what: str) -> None:
    """Refuse a class name or shape id that is not a plain file name (it would reach outside the root)."""
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep, "\0")):
        raise ValueError(
            f"{path}: line {line}: {what} {name!r} must be a plain name (no path separators, not '.' or '..')"
        )


def _read_shape_names(path: str) -> list[str]:
    lines = _read_lines(path)
    for line, name in lines:
        _check_plain_name(name, path, line, "class name")
    names = [name for _, name in lines]
    if len(names) != ModelNet40.num_classes or len(set(names)) != len(names):
        raise ValueError(
            f"{path}: expected {ModelNet40.num_classes} distinct class names (one per line), got {len(names)} "
            f"names ({len(set(names))} distinct)"
        )
    return names


def _read_shape_txt(path: str, num_points: int) -> np.ndarray:
    """xyz (N, 3) float32 of one text file of comma-separated rows, N >= num_points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below instead
        try:
            rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot be read as rows of comma-separated numbers ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot be read ({exc})") from exc
    if rows.shape[0] == 0:
        raise ValueError(f"{path}: holds no points (expected rows x,y,z[,nx,ny,nz])")
    if rows.shape[1] < 3:
        raise ValueError(
            f"{path}: expected rows of at least 3 comma-separated values (x,y,z[,nx,ny,nz]), i.e. shape "
            f"(N, >=3), got shape {rows.shape}"
        )
    with np.errstate(over="ignore"):  # values too large for float32 become inf, reported below
        xyz = rows[:, :3].astype(np.float32)
    if not np.isfinite(xyz).all():
        bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
        raise ValueError(
            f"{path}: non-finite coordinates (NaN or inf, or values too large for float32) in rows "
            f"{(bad[:10] + 1).tolist()}"
        )
    if xyz.shape[0] < num_points:
        raise ValueError(f"{path}: has {xyz.shape[0]} points, fewer than num_points={num_points}")
    return xyz


def _fps_into(
    out: np.ndarray, group: list[tuple[int, np.ndarray]], num_points: int, paths: list[str]
) -> None:
    """Reduce the clouds ``group`` [(index into out, xyz (N, 3))] (same N) to ``num_points`` by FPS.

    A cloud that :func:`pointpeft.ops.farthest_point_sample` refuses (ValueError) is named by its file
    and index ``paths[i]``.
    """
    from pointpeft.ops import farthest_point_sample

    xyz = torch.from_numpy(np.stack([cloud for _, cloud in group]))  # (B, N, 3)
    try:
        idx = farthest_point_sample(xyz, num_points)  # (B, num_points)
    except ValueError as exc:
        for i, cloud in group:  # find the cloud at fault, to name it
            try:
                farthest_point_sample(torch.from_numpy(cloud)[None], num_points)
            except ValueError as one:
                raise ValueError(
                    f"{paths[i]} (shape {i}): farthest point sampling refused it: {one}"
                ) from one
        raise ValueError(
            f"shapes {[paths[i] for i, _ in group][:3]}...: farthest point sampling failed: {exc}"
        ) from exc
    sampled = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))  # (B, num_points, 3)
    out[[i for i, _ in group]] = sampled.numpy()


def _check_sizes_fit(paths: list[str], num_points: int) -> None:
    """Before allocating (M, num_points, 3): every text file must be large enough for num_points rows
    (else it is read, for the exact error)."""
    for path in paths:
        if os.path.getsize(path) < _MIN_ROW_BYTES * num_points - 1:
            _read_shape_txt(path, num_points)  # raises: too few points (or unreadable)


class ModelNet40(Dataset):
    """ModelNet40 classification (40 classes) from ``modelnet40_normal_resampled/``.

    Args:
        root: the ``modelnet40_normal_resampled`` directory.
        split: ``"train"`` or ``"test"``.
        source: ``"txt"`` reads ``modelnet40_{split}.txt`` and the per-shape text files
            ``<class>/<shape_id>.txt``; a shape with more than ``num_points`` rows is reduced to
            ``num_points`` by farthest point sampling (:func:`pointpeft.ops.farthest_point_sample`,
            starting from row 0), as the reference did when building its cache. ``"dat"`` reads the cache
            ``modelnet40_{split}_8192pts_fps.dat`` and keeps the first ``num_points`` points of each shape
            (a prefix of an FPS ordering is itself an FPS sample). ``"auto"`` picks ``"dat"`` when that
            file exists, else ``"txt"``.
        num_points: P, the points kept per shape (every shape must have at least P).

    Attributes:
        num_classes: 40.
        split, num_points: the arguments; ``source``: ``"txt"`` or ``"dat"`` (``"auto"`` resolved).
        path: the file read: the shape list (txt) or the cache (dat).
        classes: the 40 class names of ``modelnet40_shape_names.txt``, or None for the dat source when
            that file is absent.
        points: FloatTensor (M, P, 3), float32, each shape centred with maximum norm 1.
        labels: LongTensor (M,), values in [0, 40).

    Items are ``(points (P, 3) float32 tensor, label int)``.

    Raises:
        FileNotFoundError: if the root, the shape list, the class names (txt), a shape file or the cache
            (dat) is missing.
        ValueError: on a bad argument, or a file with an unknown class, a shape id that is not a plain
            name, wrong shapes, too few points, non-finite coordinates, coordinates that farthest point
            sampling refuses, all points equal, or labels that are not integers in [0, 40); the message
            names the file and the shape index.
        pointpeft.data.safe_pickle.PickleFileError: (a ValueError and a ``pickle.UnpicklingError``) if
            the cache is not a valid pickle or names a global other than numpy's array reconstruction
            (nothing from the file is run).
    """

    num_classes = 40

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        source: str = "auto",
        num_points: int = 8192,
    ) -> None:
        super().__init__()
        split = check_choice("split", split, list(_SPLITS))
        source = check_choice("source", source, list(_SOURCES))
        self.num_points = check_positive_int("num_points", num_points)
        self.split = split
        self.root = _check_root(root, "ModelNet40")
        dat_path = os.path.join(self.root, f"modelnet40_{split}_8192pts_fps.dat")
        names_path = os.path.join(self.root, _SHAPE_NAMES)
        if source == "auto":
            source = "dat" if os.path.isfile(dat_path) else "txt"
        self.source = source

        self.classes: list[str] | None
        if source == "dat":
            self.path = dat_path
            if not os.path.isfile(dat_path):
                raise FileNotFoundError(f"ModelNet40 {split} cache file not found: {dat_path}")
            self.classes = _read_shape_names(names_path) if os.path.isfile(names_path) else None
            points, labels = self._read_dat(dat_path, self.num_points)
        else:
            self.path = os.path.join(self.root, f"modelnet40_{split}.txt")
            for needed in (names_path, self.path):
                if not os.path.isfile(needed):
                    raise FileNotFoundError(
                        f"ModelNet40 {split} split (txt source): file not found: {needed}"
                    )
            self.classes = _read_shape_names(names_path)
            points, labels = self._read_txt(self.root, self.path, self.classes, self.num_points, split)
        self.points: torch.Tensor = torch.from_numpy(points)
        self.labels: torch.Tensor = torch.from_numpy(labels)

    @classmethod
    def _read_dat(cls, path: str, num_points: int) -> tuple[np.ndarray, np.ndarray]:
        data = load_pickle(path)
        if not (
            isinstance(data, (list, tuple))
            and len(data) == 2
            and all(isinstance(part, (list, tuple)) for part in data)
        ):
            raise ValueError(
                f"{path}: expected a pickled 2-element list [list_of_points, list_of_labels], got "
                f"{describe(data)}"
            )
        clouds, raw_labels = data
        if len(clouds) != len(raw_labels):
            raise ValueError(
                f"{path}: the list of points has {len(clouds)} entries but the list of labels {len(raw_labels)}"
            )
        if not clouds:
            raise ValueError(f"{path}: holds no shapes")
        points = _stack_clouds(
            clouds, path, "points[{}]", need=num_points, need_name="num_points", keep=num_points
        )
        labels = _collect_labels(raw_labels, cls.num_classes, path, "labels[{}]")
        check_clouds_finite(points, lambda i: f"{path}: shape {i}")
        _normalize_inplace(points, lambda i: f"{path}: shape {i}")
        return points, labels

    @classmethod
    def _read_txt(
        cls, root: str, list_path: str, classes: list[str], num_points: int, split: str
    ) -> tuple[np.ndarray, np.ndarray]:
        class_index = {name: i for i, name in enumerate(classes)}
        shape_ids = _read_lines(list_path)
        if not shape_ids:
            raise ValueError(f"{list_path}: lists no shapes")
        paths: list[str] = []
        labels = np.empty(len(shape_ids), dtype=np.int64)
        for k, (line_no, shape_id) in enumerate(shape_ids):
            _check_plain_name(shape_id, list_path, line_no, "shape id")
            name = shape_id.rsplit("_", 1)[0] if "_" in shape_id else shape_id
            if name not in class_index:
                raise ValueError(
                    f"{list_path}: line {line_no}: shape id {shape_id!r} names the unknown class {name!r} "
                    f"(expected '<class>_<number>' with a class of {os.path.join(root, _SHAPE_NAMES)})"
                )
            labels[k] = class_index[name]
            paths.append(os.path.join(root, name, f"{shape_id}.txt"))
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"ModelNet40 {split} split: {len(missing)} shape file(s) listed in {list_path} not found, "
                f"first: {missing[0]}"
            )

        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        _check_sizes_fit(paths, num_points)
        out = np.empty((len(paths), num_points, 3), dtype=np.float32)
        pending: dict[int, list[tuple[int, np.ndarray]]] = {}
        progress = tqdm(
            paths, desc=f"ModelNet40 {split}", unit="shape", disable=len(paths) < _PROGRESS_MIN_FILES
        )
        for i, path in enumerate(progress):
            xyz = _read_shape_txt(path, num_points)
            if xyz.shape[0] == num_points:
                out[i] = xyz
                continue
            group = pending.setdefault(xyz.shape[0], [])
            group.append((i, xyz))
            if len(group) == _FPS_BATCH:
                _fps_into(out, group, num_points, paths)
                group.clear()
        for group in pending.values():
            if group:
                _fps_into(out, group, num_points, paths)
        _normalize_inplace(out, lambda i: paths[i])
        return out, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Shape ``index``: ``(points (P, 3) float32, label int)``."""
        return self.points[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, source={self.source!r}, size={len(self)}, "
            f"num_points={self.num_points})"
        )


class ModelNet40FewShot(Dataset):
    """One few-shot ModelNet40 episode set: ``{root}/{way}way_{shot}shot/{fold}.pkl`` (Point-MAE layout).

    Each pickle is a dict ``{"train": [...], "test": [...]}`` of items ``(points (N, >=3), label, ...)``
    with N = 1024 in the released files; xyz is kept and normalised with :func:`pc_normalize`.

    Args:
        root: the directory holding the ``{way}way_{shot}shot/`` folders.
        way: 5 or 10 (the number of classes).
        shot: 10 or 20 (training examples per class).
        fold: 0..9.
        split: ``"train"`` or ``"test"``.
        min_points: the fewest points per shape accepted (>= 1), e.g. the points a model is fed; a file
            with fewer is refused naming it.

    Attributes:
        num_classes: ``way``.
        way, shot, fold, split: the arguments; ``path``: the pickle read.
        points: FloatTensor (M, N, 3), float32, each shape centred with maximum norm 1.
        labels: LongTensor (M,), values in [0, way).

    Items are ``(points (N, 3) float32 tensor, label int)``.

    Raises:
        FileNotFoundError: if the root or the pickle is missing.
        ValueError: on a bad argument, or a pickle of the wrong structure, shapes, too few points,
            labels (not integers in [0, way)) or non-finite coordinates; the message names the file and
            the item.
        pointpeft.data.safe_pickle.PickleFileError: (a ValueError and a ``pickle.UnpicklingError``) if
            the pickle is invalid or names a global other than numpy's array reconstruction (nothing
            from the file is run).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        way: int = 5,
        shot: int = 10,
        fold: int = 0,
        split: str = "train",
        *,
        min_points: int = 1,
    ) -> None:
        super().__init__()
        self.way = check_choice("way", way, list(_FEWSHOT_WAYS))
        self.shot = check_choice("shot", shot, list(_FEWSHOT_SHOTS))
        self.fold = check_choice("fold", fold, list(_FEWSHOT_FOLDS))
        split = check_choice("split", split, list(_SPLITS))
        min_points = check_int("min_points", min_points, 1)
        self.split = split
        self.num_classes = self.way
        root_str = _check_root(root, "ModelNet40 few-shot")
        self.path = os.path.join(root_str, f"{self.way}way_{self.shot}shot", f"{self.fold}.pkl")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"ModelNet40 few-shot way={self.way} shot={self.shot} fold={self.fold}: file not found: {self.path}"
            )
        points, labels = self._read(self.path, split, self.way, min_points)
        self.points: torch.Tensor = torch.from_numpy(points)
        self.labels: torch.Tensor = torch.from_numpy(labels)

    @staticmethod
    def _read(path: str, split: str, way: int, min_points: int = 1) -> tuple[np.ndarray, np.ndarray]:
        data = load_pickle(path)
        if not isinstance(data, dict) or split not in data:
            keys = sorted(map(repr, data)) if isinstance(data, dict) else None
            raise ValueError(
                f"{path}: expected a pickled dict with keys 'train' and 'test', got "
                + (f"a dict with keys [{', '.join(keys)}]" if keys is not None else describe(data))
            )
        items = data[split]
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(f"{path}: [{split!r}] must be a non-empty list of items, got {describe(items)}")
        for i, item in enumerate(items):
            if not isinstance(item, (list, tuple)) or len(item) < 2:
                raise ValueError(
                    f"{path}: [{split!r}][{i}] must be a tuple (points, label, ...), got {describe(item)}"
                )
        what = f"[{split!r}][{{}}]"
        points = _stack_clouds(
            [item[0] for item in items],
            path,
            what + "[0] (points)",
            need=min_points,
            need_name="min_points",
            keep=None,
        )
        labels = _collect_labels([item[1] for item in items], way, path, what + "[1] (label)")
        check_clouds_finite(points, lambda i: f"{path}: [{split!r}][{i}]")
        _normalize_inplace(points, lambda i: f"{path}: [{split!r}][{i}]")
        return points, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index``: ``(points (N, 3) float32, label int)``."""
        return self.points[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(way={self.way}, shot={self.shot}, fold={self.fold}, split={self.split!r}, "
            f"size={len(self)})"
        )
