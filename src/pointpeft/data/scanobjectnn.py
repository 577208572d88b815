"""ScanObjectNN (OBJ_BG, OBJ_ONLY, PB_T50_RS) read from the HDF5 files of the Point-MAE family.

Each file holds ``data`` (float, (M, P, 3), P = 2048 in the released files) and ``label`` (int, (M,)
or (M, 1), values 0..14). Points are returned as stored (raw xyz, no normalisation), as the reference
loader does; sampling and augmentation happen per batch (see :mod:`pointpeft.data.transforms`).

A file is checked before anything of its size is allocated:

* each dataset must be a plain HDF5 dataset of this file (no external link, external raw storage or
  virtual dataset) of a numeric dtype and the expected rank and shape, with M >= 1 objects of
  P >= ``min_points`` points, and as many labels as objects;
* its declared size must be what the file really stores. Uncompressed data: the bytes stored equal the
  declared size (an unwritten dataset or chunk would read as fill values). Compressed (chunked, filtered)
  data: every chunk must be stored, the decompressed size may not exceed ``max_bytes``
  (:data:`DEFAULT_MAX_BYTES`), and for gzip (deflate, with shuffle and fletcher32) every chunk is
  decompressed once, streaming, to check that it holds exactly its declared size (HDF5 itself fills a
  short chunk with leftover memory without an error) and is not corrupt; other filters (lzf, szip,
  plugins) are bounded by ``max_bytes`` only.

Then the data are read block by block; any HDF5 error (a corrupt chunk, a truncated file) becomes a
``ValueError`` naming the file, the dataset and the rows, and the points must be finite and within the
coordinate range of the point ops (:func:`pointpeft.ops.safe_coordinate_range`, so that sampling them
later cannot fail without naming the file), each object must have points that are not all equal, and the
labels must be integers in [0, 15).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.checks import check_choice, check_int, check_path
from pointpeft.data.checks import (
    check_clouds_distinct,
    check_clouds_finite,
    check_clouds_in_range,
    check_labels,
)
from pointpeft.ops import safe_coordinate_range

__all__ = ["DEFAULT_MAX_BYTES", "SCANOBJECTNN_FILES", "ScanObjectNN"]

#: The file of each variant and split, relative to the dataset root.
SCANOBJECTNN_FILES: dict[str, dict[str, str]] = {
    "OBJ_BG": {
        "train": "main_split/training_objectdataset.h5",
        "test": "main_split/test_objectdataset.h5",
    },
    "OBJ_ONLY": {
        "train": "main_split_nobg/training_objectdataset.h5",
        "test": "main_split_nobg/test_objectdataset.h5",
    },
    "PB_T50_RS": {
        "train": "main_split/training_objectdataset_augmentedrot_scale75.h5",
        "test": "main_split/test_objectdataset_augmentedrot_scale75.h5",
    },
}

#: The default ``max_bytes`` of :class:`ScanObjectNN`: the most memory (4 GiB) a compressed dataset may
#: decompress to. The largest released file (PB_T50_RS train, 11416 x 2048 x 3 float32) needs 268 MiB.
DEFAULT_MAX_BYTES = 4 * 2**30

_SPLITS = ("train", "test")
_READ_BLOCK_BYTES = 64 * 2**20  # rows read from HDF5 at a time
_INFLATE_STEP = 16 * 2**20  # bytes decompressed at a time when checking a chunk
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def _import_h5py() -> Any:
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "reading ScanObjectNN needs h5py: pip install 'pointpeft[data]' (or pip install h5py)"
        ) from exc
    return h5py


@contextmanager
def _h5_errors(path: str, what: str) -> Iterator[None]:
    """Turn an h5py/HDF5 error into a ValueError naming the file and what was being done."""
    try:
        yield
    except _H5_ERRORS as exc:
        raise ValueError(
            f"{path}: {what}: {type(exc).__name__}: {exc} (the file is corrupt, truncated or not a ScanObjectNN "
            "HDF5 file; download it again)"
        ) from exc


# --------------------------------------------------------------------------------------------------
# One dataset of the file: lookup, storage and size checks, reading
# --------------------------------------------------------------------------------------------------


def _dataset(h5py: Any, f: Any, path: str, key: str) -> Any:
    """The h5py dataset ``key`` of ``f`` (a link inside the file, of a numeric dtype), or None if absent."""
    with _h5_errors(path, f"cannot look up {key!r}"):
        link = f.get(key, getlink=True)
        obj: Any = None if isinstance(link, h5py.ExternalLink) else f.get(key)
        dtype = obj.dtype if isinstance(obj, h5py.Dataset) else None
    if isinstance(link, h5py.ExternalLink):
        raise ValueError(
            f"{path}: {key!r} is an external link to {link.filename}:{link.path}; the dataset must be "
            "stored in the file itself"
        )
    if dtype is None:
        return None
    if obj.shape is None:
        raise ValueError(f"{path}: {key!r} has an empty (null) dataspace: it holds no data")
    if dtype.kind not in "iuf":
        raise ValueError(f"{path}: {key!r} must hold integers or floats, got dtype {dtype}")
    return obj


def _expected_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    return math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True))


def _check_storage(h5py: Any, ds: Any, path: str, key: str, out_itemsize: int, max_bytes: int) -> None:
    """Check that the file stores the whole of ``ds`` before anything of its declared size is allocated.

    ``out_itemsize`` is the bytes per element of the array it will be read into.
    """
    with _h5_errors(path, f"cannot inspect the storage of {key!r}"):
        plist = ds.id.get_create_plist()
        layout = plist.get_layout()
        external = plist.get_external_count()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        stored = ds.id.get_storage_size()
        allocated = ds.id.get_num_chunks() if layout == h5py.h5d.CHUNKED else None
    declared = ds.size * ds.dtype.itemsize
    shape = tuple(ds.shape)
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED) or external:
        raise ValueError(
            f"{path}: {key!r} is a virtual dataset or has external raw storage (data kept in other files); "
            "it must be stored in the file itself"
        )
    if stored > os.path.getsize(path):
        raise ValueError(
            f"{path}: {key!r} claims {stored} stored bytes, more than the file size {os.path.getsize(path)} "
            "(the file is truncated)"
        )
    if allocated is not None:
        expected = _expected_chunks(shape, tuple(ds.chunks))
        if allocated != expected:
            raise ValueError(
                f"{path}: {key!r} declares shape {shape} ({declared} bytes) in {expected} chunks, but only "
                f"{allocated} chunks are stored: the dataset was never fully written (unwritten parts read as "
                "fill values)"
            )
    if not filters:
        if allocated is None and stored != declared:
            raise ValueError(
                f"{path}: {key!r} declares shape {shape} ({declared} bytes) but the file stores {stored} bytes "
                "of it: the dataset was never fully written (unwritten parts read as fill values)"
            )
        return
    needed = ds.size * out_itemsize
    if needed > max_bytes:
        raise ValueError(
            f"{path}: {key!r} is compressed ({stored} bytes in the file) and declares shape {shape}, which "
            f"needs {needed} bytes in memory, more than max_bytes={max_bytes}; pass a larger max_bytes if "
            "the file is genuine"
        )
    if _inflate_checkable(h5py, filters):
        _check_deflate_chunks(h5py, ds, path, key, filters)


def _inflate_checkable(h5py: Any, filters: list[int]) -> bool:
    """Whether every chunk's decoded size can be found by inflating it: deflate once, shuffle only
    before it (in write order), fletcher32 anywhere."""
    known = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32}
    if not set(filters) <= known or filters.count(h5py.h5z.FILTER_DEFLATE) != 1:
        return False
    after = filters[filters.index(h5py.h5z.FILTER_DEFLATE) + 1 :]
    return h5py.h5z.FILTER_SHUFFLE not in after


def _chunk_infos(ds: Any) -> list[Any]:
    """The StoreInfo (chunk_offset, filter_mask, byte_offset, size) of every stored chunk of ``ds``."""
    if hasattr(ds.id, "chunk_iter"):
        infos: list[Any] = []
        ds.id.chunk_iter(infos.append)
        return infos
    return [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]


def _inflated_size(raw: bytes, limit: int) -> int | None:
    """The size of the zlib stream ``raw`` once decompressed (streaming, at most ``limit + 1`` bytes
    counted); None if the stream is corrupt or cut short."""
    inflater = zlib.decompressobj()
    total = 0
    data = raw
    try:
        while data and total <= limit:
            total += len(inflater.decompress(data, _INFLATE_STEP))
            data = inflater.unconsumed_tail
        total += len(inflater.flush()) if total <= limit else 0
    except zlib.error:
        return None
    return total if inflater.eof or total > limit else None


def _decoded_size(h5py: Any, raw: bytes, filters: list[int], mask: int, limit: int) -> int | None:
    """The size of one stored chunk once its filters (write order ``filters``; filter ``i`` skipped for
    this chunk where ``mask`` has bit ``i``) are undone; None if it cannot be decoded.

    Filters are undone in reverse: fletcher32 strips its 4-byte checksum, deflate is inflated (streaming,
    only the size is kept), shuffle keeps the size.
    """
    data: bytes | None = raw
    size = len(raw)
    for index in range(len(filters) - 1, -1, -1):
        if mask & (1 << index):
            continue
        if filters[index] == h5py.h5z.FILTER_FLETCHER32:
            if size < 4:
                return None
            size -= 4
            data = None if data is None else data[:-4]
        elif filters[index] == h5py.h5z.FILTER_DEFLATE and data is not None:
            inflated = _inflated_size(data, limit + 4 * len(filters))
            if inflated is None:
                return None
            size, data = inflated, None
    return size


def _check_deflate_chunks(h5py: Any, ds: Any, path: str, key: str, filters: list[int]) -> None:
    """Decompress every chunk of ``ds`` once (streaming) and check it holds exactly its declared size."""
    chunk_bytes = math.prod(ds.chunks) * ds.dtype.itemsize
    with _h5_errors(path, f"cannot list the chunks of {key!r}"):
        infos = _chunk_infos(ds)
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        for info in infos:
            rows = f"{key!r} rows {info.chunk_offset[0]}..{info.chunk_offset[0] + ds.chunks[0] - 1}"
            if info.byte_offset is None or info.byte_offset + info.size > file_size:
                raise ValueError(f"{path}: the chunk of {rows} lies beyond the end of the file (truncated)")
            decoded = _decoded_size(
                h5py, _read_at(f, info.byte_offset, info.size), filters, info.filter_mask, chunk_bytes
            )
            if decoded is None:
                raise ValueError(
                    f"{path}: the compressed chunk of {rows} is corrupt (it does not decompress); download "
                    "the file again"
                )
            if decoded != chunk_bytes:
                raise ValueError(
                    f"{path}: the compressed chunk of {rows} decompresses to {decoded} bytes, not the "
                    f"{chunk_bytes} its chunk shape {tuple(ds.chunks)} declares (a corrupt or forged chunk)"
                )


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _read_rows(ds: Any, path: str, key: str, dtype: np.dtype) -> np.ndarray:
    """All of ``ds`` as ``dtype``, read in blocks of rows (whole chunks) so that an error names the rows."""
    out = np.empty(ds.shape, dtype=dtype)
    row_bytes = max(1, math.prod(ds.shape[1:]) * dtype.itemsize)
    rows = max(1, _READ_BLOCK_BYTES // row_bytes)
    if ds.chunks is not None:
        rows = max(1, rows // ds.chunks[0]) * ds.chunks[0]
    for start in range(0, ds.shape[0], rows):
        stop = min(ds.shape[0], start + rows)
        with _h5_errors(path, f"cannot read {key!r} rows {start}..{stop - 1}"):
            ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
    return out


def _label_dtype(dtype: np.dtype) -> np.dtype:
    """The array type labels of HDF5 type ``dtype`` are read into (keeps every value exact or inf)."""
    return np.dtype({"i": np.int64, "u": np.uint64}.get(dtype.kind, np.float64))


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class ScanObjectNN(Dataset):
    """ScanObjectNN classification (15 classes) from the Point-MAE family's HDF5 files.

    Args:
        root: the dataset root, containing ``main_split/`` (OBJ_BG, PB_T50_RS) and/or
            ``main_split_nobg/`` (OBJ_ONLY); see :data:`SCANOBJECTNN_FILES`.
        variant: ``"OBJ_BG"``, ``"OBJ_ONLY"`` or ``"PB_T50_RS"`` (case-insensitive).
        split: ``"train"`` or ``"test"``.
        min_points: the fewest points per object accepted (>= 1), e.g. the points a model is fed; a
            file with fewer is refused naming it.
        max_bytes: the most memory a compressed dataset of the file may decompress to (default
            :data:`DEFAULT_MAX_BYTES`, 4 GiB); uncompressed data are checked against the bytes stored.

    Attributes:
        num_classes: 15.
        variant, split: the arguments (``variant`` upper-cased).
        path: the HDF5 file read.
        points: FloatTensor (M, P, 3), float32, raw xyz (P = 2048 in the released files), M >= 1.
        labels: LongTensor (M,), values in [0, 15).

    Items are ``(points (P, 3) float32 tensor, label int)``.

    Raises:
        ValueError: on a bad ``variant``, ``split``, ``min_points`` or ``max_bytes``, or a file that is
            corrupt, truncated, not fully written or larger than it stores, with missing keys, wrong
            shapes, no objects, fewer than ``min_points`` points, non-numeric or non-finite points,
            points outside the range of :func:`pointpeft.ops.safe_coordinate_range`, objects whose
            points are all equal, or labels that are not integers in [0, 15); the message
            names the file (and the dataset, rows or index).
        TypeError: if ``min_points`` or ``max_bytes`` is not an int.
        FileNotFoundError: if the file of ``variant``/``split`` does not exist.
        ImportError: if h5py is not installed.
    """

    num_classes = 15

    def __init__(
        self,
        root: str | os.PathLike[str],
        variant: str = "OBJ_BG",
        split: str = "train",
        *,
        min_points: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__()
        if not isinstance(variant, str) or variant.upper() not in SCANOBJECTNN_FILES:
            raise ValueError(
                f"variant must be one of {list(SCANOBJECTNN_FILES)} (case-insensitive), got {variant!r}"
            )
        split = check_choice("split", split, list(_SPLITS))
        min_points = check_int("min_points", min_points, 1)
        max_bytes = check_int("max_bytes", max_bytes, 1)
        self.variant = variant.upper()
        self.split = split
        root_str = check_path("root", root, what="the dataset folder")
        self.path = os.path.join(root_str, SCANOBJECTNN_FILES[self.variant][split])
        if not os.path.isfile(self.path):
            where = "" if os.path.isdir(root_str) else f" (the root directory {root_str} does not exist)"
            raise FileNotFoundError(
                f"ScanObjectNN {self.variant} {split} split: file not found: {self.path}{where}"
            )
        points, labels = self._read(self.path, min_points, max_bytes)
        self.points: torch.Tensor = torch.from_numpy(points)
        self.labels: torch.Tensor = torch.from_numpy(labels)

    @classmethod
    def _read(
        cls, path: str, min_points: int = 1, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read and validate one file: float32 points (M, P, 3) and int64 labels (M,)."""
        h5py = _import_h5py()
        with _h5_errors(path, "cannot be read as an HDF5 file"):
            f = h5py.File(path, "r")
        with f:
            data_ds, label_ds = _open_pair(h5py, f, path)
            m = _check_shapes(path, data_ds.shape, label_ds.shape, min_points)
            _check_storage(h5py, data_ds, path, "data", 4, max_bytes)
            label_dtype = _label_dtype(label_ds.dtype)
            _check_storage(h5py, label_ds, path, "label", label_dtype.itemsize, max_bytes)
            points = _read_rows(data_ds, path, "data", np.dtype(np.float32))
            raw_labels = _read_rows(label_ds, path, "label", label_dtype).reshape(m)
        check_clouds_finite(points, _name_of(path, "data"))
        check_clouds_in_range(points, *safe_coordinate_range(torch.float32), _name_of(path, "data"))
        labels = check_labels(raw_labels, cls.num_classes, _name_of(path, "label"))
        check_clouds_distinct(points, _name_of(path, "data"))
        return points, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Object ``index``: ``(points (P, 3) float32, label int)``."""
        return self.points[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(variant={self.variant!r}, split={self.split!r}, size={len(self)}, "
            f"num_points={self.points.shape[1]})"
        )


def _name_of(path: str, key: str) -> Callable[[int], str]:
    return lambda i: f"{path}: {key!r}[{i}]"


def _open_pair(h5py: Any, f: Any, path: str) -> tuple[Any, Any]:
    """The ``data`` and ``label`` datasets of ``f``, or a ValueError listing the keys found."""
    found = {key: _dataset(h5py, f, path, key) for key in ("data", "label")}
    missing = [key for key, ds in found.items() if ds is None]
    if missing:
        with _h5_errors(path, "cannot list its contents"):
            keys = sorted(f.keys())
        raise ValueError(
            f"{path}: expected HDF5 datasets 'data' and 'label', missing {missing}; keys found: {keys}"
        )
    return found["data"], found["label"]


def _check_shapes(
    path: str, data_shape: tuple[int, ...], label_shape: tuple[int, ...], min_points: int
) -> int:
    """Check ``data`` (M, P, 3) with M >= 1 and P >= min_points, and ``label`` (M,) or (M, 1); return M."""
    if len(data_shape) != 3 or data_shape[2] != 3:
        raise ValueError(f"{path}: 'data' must have shape (M, P, 3), got {tuple(data_shape)}")
    m, p = data_shape[0], data_shape[1]
    if m == 0:
        raise ValueError(
            f"{path}: holds no objects ('data' has shape {tuple(data_shape)}); a split needs M >= 1"
        )
    if p < min_points:
        raise ValueError(
            f"{path}: objects have {p} points ('data' has shape {tuple(data_shape)}), fewer than "
            f"min_points={min_points}"
        )
    if tuple(label_shape) not in ((m,), (m, 1)):
        raise ValueError(
            f"{path}: 'label' must have shape ({m},) or ({m}, 1) to match 'data' of shape "
            f"{tuple(data_shape)}, got {tuple(label_shape)}"
        )
    return m
