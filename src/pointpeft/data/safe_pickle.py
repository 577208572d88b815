"""A restricted unpickler for the ModelNet40 caches: it rebuilds numpy arrays and runs no other code.

The Point-MAE family ships ModelNet40 as pickles (``modelnet40_*_8192pts_fps.dat`` and the few-shot
``{way}way_{shot}shot/{fold}.pkl`` files). ``pickle.load`` would call any global a file names, so a
tampered file could run arbitrary code. :func:`load_pickle` resolves only the globals that numpy
arrays, dtypes and scalars need (written by numpy 1.x as ``numpy.core.*`` or by numpy 2.x as
``numpy._core.*``, with pickle protocols 0 to 5); any other global raises :class:`PickleFileError`
naming the file and the global, before anything is called.

The globals it does resolve are checked wrappers, not numpy's own callables, so that a file can only
rebuild arrays the way numpy itself pickles them:

* ``numpy.ndarray`` is a token that can only be passed to ``_reconstruct`` (calling it, or building
  an object of it with ``NEWOBJ``, is refused: ``ndarray(shape)`` would allocate any size the file asks
  for);
* ``_reconstruct`` only makes the empty array (``shape`` with no element) that numpy's pickles fill by
  ``__setstate__`` from bytes that are in the file;
* dtypes (from ``numpy.dtype`` and from ``__setstate__``, which the unpickler checks on every ``BUILD``)
  must be plain: no Python objects, fields or sub-arrays, and no object flags (a dtype whose state
  claimed to hold objects would make numpy read bytes of the file as object pointers);
* ``BUILD`` is applied to numpy arrays and dtypes only;
* every length the file declares (bytes, strings, frames, bytearrays) is checked against what is left
  of the file before anything is allocated for it.

It uses the pure-Python unpickler of the standard library (``pickle._Unpickler``, whose opcode table
can be extended, unlike the C one's); the caches hold few, large arrays, so its speed is not a concern.
Every failure is a :class:`PickleFileError` (a ``ValueError`` and a ``pickle.UnpicklingError``) whose
message names the file.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "PickleFileError", "load_pickle"]


class PickleFileError(pickle.UnpicklingError, ValueError):
    """A pickle file that cannot be read safely: refused global, malformed or truncated contents.

    The message names the file. It is a ``ValueError`` (bad input) and a ``pickle.UnpicklingError``.
    """


# numpy 2 moved numpy.core to numpy._core and keeps numpy.core as a deprecated alias: both spellings
# are resolved from the module that exists, without touching the alias (and its warning).
_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

# dtype state flags that mean "holds Python objects" (NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE,
# NPY_ITEM_IS_POINTER, NPY_NEEDS_PYAPI, NPY_USE_GETITEM, NPY_USE_SETITEM); plain dtypes have none
# (unicode strings have NPY_NEEDS_INIT = 0x08, which is harmless).
_OBJECT_FLAGS = 0x01 | 0x02 | 0x04 | 0x10 | 0x20 | 0x40


def _resolve(modules: tuple[str, ...], name: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"none of the modules {list(modules)} defines {name!r}")


class _NdarrayToken:
    """What the global ``numpy.ndarray`` resolves to: only ``_reconstruct`` accepts it."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args: object) -> None:
        raise PickleFileError(
            "refused to call numpy.ndarray(...): it would allocate whatever size the file asks for; numpy "
            "pickles arrays with _reconstruct and the bytes of the file"
        )


_NDARRAY = _NdarrayToken()


def _plain_dtype(obj: object, *args: object) -> np.dtype:
    """``numpy.dtype(obj, *args)``, refused unless it is plain (no objects, fields or sub-arrays)."""
    if isinstance(obj, np.dtype):
        dtype = obj
    else:
        if not isinstance(obj, (str, bytes)):
            raise PickleFileError(f"refused numpy.dtype({type(obj).__name__}): only type strings are allowed")
        dtype = np.dtype(obj.decode("latin1") if isinstance(obj, bytes) else obj, *args)  # type: ignore[call-overload]
    _check_plain(dtype)
    return dtype


def _check_plain(dtype: np.dtype) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise PickleFileError(
            f"refused the dtype {dtype}: only plain dtypes (no Python objects, fields or sub-arrays) are allowed"
        )


def _reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, shape, typecode)`` for an empty ``shape`` (as numpy pickles it)."""
    if subtype is not _NDARRAY:
        raise PickleFileError(f"refused _reconstruct of {subtype!r}: only numpy.ndarray is allowed")
    if (
        not isinstance(shape, tuple)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or int(np.prod(shape, dtype=object)) != 0
    ):
        raise PickleFileError(
            f"refused _reconstruct with shape {shape!r}: numpy pickles an empty shape such as (0,) and fills "
            "the array from the bytes of the file"
        )
    real = _resolve(_MULTIARRAY, "_reconstruct")
    return real(np.ndarray, shape, _plain_dtype(typecode))  # type: ignore[no-any-return]


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5): wraps bytes already in the file, with a plain dtype."""
    real = _resolve(_NUMERIC, "_frombuffer")
    return real(buffer, _plain_dtype(dtype), shape, order)  # type: ignore[no-any-return]


def _scalar(dtype: object, *args: object) -> object:
    """numpy's ``scalar(dtype, bytes)``: a numpy scalar of a plain dtype."""
    real = _resolve(_MULTIARRAY, "scalar")
    return real(_plain_dtype(dtype), *args)


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: ``text.encode("latin1")``, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PickleFileError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only the latin1 encoding of a "
            "string, which pickle uses for bytes, is allowed"
        )
    return text.encode("latin1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
# (module, name) as written in the pickle -> the checked callable (or token) it resolves to.
_RESOLVE: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _plain_dtype,
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_MODULES},
    **{(module, "scalar"): _scalar for module in _NUMPY_MODULES},
    # Protocol 5 (the default of Python >= 3.14) pickles contiguous arrays as
    # ``_frombuffer(buffer, dtype, shape, order)``, which only wraps bytes already in the file.
    **{(module, "_frombuffer"): _frombuffer for module in _NUMERIC_MODULES},
    # Protocols 0-2 store bytes (an array's data among them) as ``_codecs.encode(text, "latin1")``.
    ("_codecs", "encode"): _latin1_encode,
}

#: The globals a pickle may name, as ``(module, name)`` pairs; everything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_RESOLVE)


class _BoundedReader:
    """A binary file that refuses to read past its end: a declared length larger than what is left of
    the file is an error before anything is allocated for it."""

    def __init__(self, file: io.BufferedReader, size: int) -> None:
        self._file = file
        self.size = size

    def remaining(self) -> int:
        return self.size - self._file.tell()

    def _check(self, n: int) -> None:
        left = self.remaining()
        if n > left:
            raise PickleFileError(
                f"not a valid pickle file: an entry declares {n} bytes but only {left} bytes are left in the "
                "file (truncated or corrupt)"
            )

    def read(self, n: int = -1) -> bytes:
        if n is not None and n >= 0:
            self._check(n)
        return self._file.read(n)

    def readinto(self, buffer: Any) -> int:
        self._check(len(buffer))
        return self._file.readinto(buffer)

    def readline(self) -> bytes:
        return self._file.readline()


class _RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that resolves only :data:`ALLOWED_GLOBALS` and checks every ``BUILD``."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    # Set by pickle._Unpickler.load (declared for the type checker).
    stack: list[Any]
    read: Callable[[int], bytes]
    readinto: Callable[[Any], int]
    append: Callable[[Any], None]

    def __init__(self, file: _BoundedReader, path: str) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self._path = path
        self._reader = file

    def find_class(self, module: str, name: str) -> Any:
        entry = _RESOLVE.get((module, name))
        if entry is None:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS))
            raise PickleFileError(
                f"{self._path}: refused to load the global '{module}.{name}': only numpy arrays, dtypes "
                f"and scalars may be unpickled (allowed globals: {allowed}); the file is not a dataset "
                "cache in the expected format, or it was tampered with"
            )
        return entry

    def persistent_load(self, pid: Any) -> Any:
        raise PickleFileError(
            f"{self._path}: refused a persistent id ({pid!r}): dataset caches do not use them"
        )

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(state)
            inst.__setstate__(state)  # type: ignore[attr-defined]
            _check_plain(inst)
        else:
            raise PickleFileError(
                f"refused to set the state of a {type(inst).__name__}: only numpy arrays and dtypes are rebuilt"
            )

    def _load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._reader.size:  # before bytearray(size) allocates it (the data may be in a frame)
            raise PickleFileError(
                f"not a valid pickle file: a bytearray declares {size} bytes, more than the whole file "
                f"({self._reader.size} bytes)"
            )
        buffer = bytearray(size)
        self.readinto(buffer)
        self.append(buffer)

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def _check_dtype_state(state: object) -> None:
    """A dtype ``__setstate__`` state as numpy writes it for a plain dtype: no sub-array, fields or
    object flags."""
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
        raise PickleFileError(f"refused a dtype state {str(state)[:100]}: not the state numpy writes")
    subdescr, names, fields, flags = state[2], state[3], state[4], state[7]
    if subdescr is not None or names is not None or fields is not None:
        raise PickleFileError(
            "refused a dtype state with sub-arrays or fields: only plain dtypes are allowed"
        )
    if not isinstance(flags, int) or flags & _OBJECT_FLAGS:
        raise PickleFileError(f"refused a dtype state with flags {flags!r}: it claims to hold Python objects")


def _named(path: str, exc: BaseException) -> PickleFileError:
    """``exc`` as a :class:`PickleFileError` whose message starts with ``path``."""
    if isinstance(exc, PickleFileError):
        text = str(exc)
        return exc if text.startswith(path) else PickleFileError(f"{path}: {text}")
    if isinstance(exc, MemoryError):
        return PickleFileError(
            f"{path}: not a valid pickle file: it declares an object too large for memory (corrupt or hostile)"
        )
    return PickleFileError(f"{path}: not a valid pickle file ({type(exc).__name__}: {exc})")


def load_pickle(path: str | os.PathLike[str]) -> object:
    """Read a pickle file, allowing only numpy array reconstruction (no other code is run).

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (built from lists, tuples, dicts, strings, numbers, numpy arrays of plain
        dtypes, dtypes and numpy scalars).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        PickleFileError: (a ``ValueError`` and a ``pickle.UnpicklingError``) if the file is empty or
            unreadable, names a global outside :data:`ALLOWED_GLOBALS`, asks for something the checks
            above refuse, or is not a valid pickle (truncated or corrupt); the message names the file.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise FileNotFoundError(f"pickle file not found: {path_str}")
    try:
        f = open(path_str, "rb")  # noqa: SIM115 (closed below)
        size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise PickleFileError(f"{path_str}: cannot be read ({exc})") from exc
    with f:
        if size == 0:
            raise PickleFileError(f"{path_str}: the file is empty (0 bytes), not a pickle")
        try:
            return _RestrictedUnpickler(_BoundedReader(f, size), path_str).load()
        except PickleFileError as exc:
            raise _named(path_str, exc) from None
        except Exception as exc:  # UnpicklingError, EOFError, ValueError, MemoryError ... of a corrupt file
            raise _named(path_str, exc) from exc
