"""A restricted unpickler for the ModelNet40 caches: it rebuilds numpy arrays and runs no other code.

The Point-MAE family ships ModelNet40 as pickles (``modelnet40_*_8192pts_fps.dat`` and the few-shot
``{way}way_{shot}shot/{fold}.pkl`` files). ``pickle.load`` would call any global a file names, so a
tampered file could run arbitrary code. :func:`load_pickle` resolves only the globals that numpy
arrays, dtypes and scalars need (written by numpy 1.x as ``numpy.core.*`` or by numpy 2.x as
``numpy._core.*``, with pickle protocols 0 to 5); any other global raises
:class:`pickle.UnpicklingError` naming the file and the global, before anything is called.
"""

from __future__ import annotations

import importlib
import os
import pickle
from typing import Any

__all__ = ["ALLOWED_GLOBALS", "load_pickle"]

# (module, name) as written in the pickle -> (candidate modules to resolve it from, in order; name).
# numpy 2 moved numpy.core to numpy._core and keeps numpy.core as a deprecated alias: both spellings
# are resolved from the module that exists, without touching the alias (and its warning).
_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_RESOLVE: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
    ("numpy.core.multiarray", "_reconstruct"): (_MULTIARRAY, "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (_MULTIARRAY, "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): (_MULTIARRAY, "scalar"),
    ("numpy._core.multiarray", "scalar"): (_MULTIARRAY, "scalar"),
    # Protocol 5 (the default of Python >= 3.14) pickles contiguous arrays as
    # ``_frombuffer(buffer, dtype, shape, order)``, which only wraps bytes already in the file.
    ("numpy.core.numeric", "_frombuffer"): (_NUMERIC, "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): (_NUMERIC, "_frombuffer"),
    # Protocols 0-2 store bytes (an array's data among them) as ``_codecs.encode(text, "latin1")``; it is
    # answered by :func:`_latin1_encode`, which does only that (no codec lookup).
    ("_codecs", "encode"): ((__name__,), "_latin1_encode"),
}

#: The globals a pickle may name, as ``(module, name)`` pairs; everything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_RESOLVE)


class _PickleFileError(pickle.UnpicklingError):
    """A refused global or persistent id, or an unresolvable global (the message names the file)."""


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: ``text.encode("latin1")``, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _PickleFileError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only the latin1 encoding of a "
            "string, which pickle uses for bytes, is allowed"
        )
    return text.encode("latin1")


def _resolve(modules: tuple[str, ...], name: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"none of the modules {list(modules)} defines {name!r}")


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only returns the numpy globals of :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        entry = _RESOLVE.get((module, name))
        if entry is None:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS))
            raise _PickleFileError(
                f"{self._path}: refused to load the global '{module}.{name}': only numpy arrays, dtypes "
                f"and scalars may be unpickled (allowed globals: {allowed}); the file is not a dataset "
                "cache in the expected format, or it was tampered with"
            )
        try:
            return _resolve(*entry)
        except AttributeError as exc:
            raise _PickleFileError(
                f"{self._path}: cannot resolve the global '{module}.{name}' with the installed numpy ({exc})"
            ) from exc

    def persistent_load(self, pid: Any) -> Any:
        raise _PickleFileError(
            f"{self._path}: refused a persistent id ({pid!r}): dataset caches do not use them"
        )


def load_pickle(path: str | os.PathLike[str]) -> object:
    """Read a pickle file, allowing only numpy array reconstruction (no other code is run).

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (built from lists, tuples, dicts, strings, numbers, numpy arrays, dtypes
        and numpy scalars).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        pickle.UnpicklingError: if the file names a global outside :data:`ALLOWED_GLOBALS`, or is not a
            valid pickle (truncated or corrupt); the message names the file.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise FileNotFoundError(f"pickle file not found: {path_str}")
    with open(path_str, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path_str).load()
        except _PickleFileError as exc:
            if str(exc).startswith(path_str):
                raise
            raise _PickleFileError(f"{path_str}: {exc}") from None
        except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... of a corrupt or foreign file
            raise pickle.UnpicklingError(
                f"{path_str}: not a valid pickle file ({type(exc).__name__}: {exc})"
            ) from exc
