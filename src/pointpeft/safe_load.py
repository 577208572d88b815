"""Reading ``torch.save`` files without running pickled code, with errors that name the file.

Every checkpoint pointpeft reads (pre-training checkpoints, reference DAPT checkpoints, ``last.pt``)
goes through :func:`load_torch_file`: ``torch.load(weights_only=True)``, which refuses any pickled
object other than tensors and plain containers. A file that cannot be read gives a ``ValueError`` that
names the file and says what is wrong with it. pointpeft never advises ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any

__all__ = ["load_torch_file"]

# torch's own text around the reason of a refused unpickling: its advice is to load with weights_only=False,
# which would run the file's code. Only the reason itself is kept.
_WEIGHTS_ONLY_REASON = re.compile(
    r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\s*\n|Check the documentation|$)", re.S
)


def _reason(error: BaseException) -> str:
    if isinstance(error, pickle.UnpicklingError):
        match = _WEIGHTS_ONLY_REASON.search(str(error))
        detail = match.group(1).strip() if match else "not a torch.save file"
        return (
            "it is not a torch.save file of tensors and plain containers (pointpeft reads checkpoints with "
            f"torch.load(weights_only=True), which runs no pickled code; the unpickler said: {detail})"
        )
    if isinstance(error, EOFError):
        return "it is empty or ends early (truncated)"
    text = str(error)
    if "PytorchStreamReader" in text or isinstance(error, zipfile.BadZipFile):
        return "it is truncated or corrupt (its zip archive cannot be read)"
    text = text.split("\n")[0].strip()
    if "weights_only" in text:
        text = "the file could not be read"
    return f"it could not be read ({type(error).__name__}: {text[:300]})"


def load_torch_file(path: str | os.PathLike[str], *, argument: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with pointpeft's errors.

    Args:
        path: the file.
        argument: what the file is, for the messages (e.g. ``"path_or_state_dict"`` or
            ``"run.output_dir's last.pt"``).

    Returns:
        the loaded object (tensors on the CPU).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is empty, truncated, corrupt, not a ``torch.save`` file, or holds pickled
            objects other than tensors and plain containers. The message names the file.
    """
    import torch

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{argument}: no file at {name!r}")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then reads fine, or refuses.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to read hostile bytes is the file's fault, not a bug
        raise ValueError(f"{argument}: cannot read {name!r}: {_reason(error)}") from None
