"""Backend selection for the point-cloud ops (internal: use :mod:`pointpeft.ops`).

A backend is a module with the three entry points of :class:`BackendModule`:
:mod:`pointpeft.ops.torch_backend` (always there) or :mod:`pointpeft.ops.triton_backend` (imported on
first use, so the torch path never imports it, nor triton). :func:`select_backend` picks one for an op's
``backend`` argument and tensors, as described in :mod:`pointpeft.ops`.
"""

from __future__ import annotations

import os
from typing import Literal, Protocol

import torch

from pointpeft.ops import torch_backend

Backend = Literal["auto", "torch", "triton"]

#: Environment variable read when an op is called with ``backend=None``.
BACKEND_ENV_VAR = "POINTPEFT_OPS_BACKEND"

#: The accepted values of an op's ``backend`` argument (besides None) and of ``POINTPEFT_OPS_BACKEND``.
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


class BackendModule(Protocol):
    """The entry points of a backend module. Inputs are validated by :mod:`pointpeft.ops`; ``lengths``
    arguments are None or int64 tensors of shape (B,) (see :mod:`pointpeft.ops.torch_backend`)."""

    def farthest_point_sample(
        self, xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        """LongTensor (B, M) of FPS indices of ``xyz`` (B, N, 3)."""
        ...

    def knn(
        self,
        query: torch.Tensor,
        points: torch.Tensor,
        k: int,
        query_lengths: torch.Tensor | None,
        point_lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sq_dist, idx)``, both of shape (B, M, k), of ``query`` (B, M, 3) among ``points`` (B, N, 3)."""
        ...

    def group(
        self, xyz: torch.Tensor, num_group: int, group_size: int, start_idx: int, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neighborhood, centers)`` of shapes (B, G, K, 3) and (B, G, 3) of ``xyz`` (B, N, 3)."""
        ...


class TritonModule(BackendModule, Protocol):
    """:mod:`pointpeft.ops.triton_backend`: a backend that says where it can run."""

    MAX_K: int

    def unavailable_reason(self, tensor: torch.Tensor) -> str | None:
        """Why the kernels cannot run on ``tensor``, or None when they can."""
        ...


def import_triton() -> tuple[TritonModule | None, str | None]:
    """Import :mod:`pointpeft.ops.triton_backend` on first use; return ``(module, None)`` or
    ``(None, why)``."""
    try:
        from pointpeft.ops import triton_backend
    except ImportError as exc:  # e.g. a broken triton install imported by the kernels
        return None, f"pointpeft.ops.triton_backend could not be imported ({exc})"
    return triton_backend, None


def select_backend(
    backend: object, tensor: torch.Tensor, *, k: int | None = None, k_name: str = "k"
) -> BackendModule:
    """The backend module that runs an op on ``tensor``, following ``backend`` (see :mod:`pointpeft.ops`).

    ``k`` (named ``k_name`` in errors) is the number of neighbours per query of a KNN or group op: the
    Triton kernels keep at most ``triton_backend.MAX_K`` of them, so ``"auto"`` takes the torch backend
    beyond. Only static properties of ``tensor`` (device, dtype) are read, so this runs unchanged under
    ``torch.compile`` and ``torch.export``.

    Raises:
        ValueError: if ``backend`` (or ``POINTPEFT_OPS_BACKEND``) is not a known backend.
        RuntimeError: if ``"triton"`` is requested but cannot run on ``tensor``.
    """
    origin = ""
    if backend is None:
        env = os.environ.get(BACKEND_ENV_VAR, "")
        if env == "":
            backend = "auto"
        elif env in BACKENDS:
            backend, origin = env, f" (through the environment variable {BACKEND_ENV_VAR})"
        else:
            raise ValueError(
                f"environment variable {BACKEND_ENV_VAR} must be one of 'auto', 'torch', 'triton' "
                f"(or unset/empty), got {env!r}"
            )
    elif not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be None, 'auto', 'torch' or 'triton', got {backend!r}")

    if backend == "torch":
        return torch_backend
    if backend == "auto" and tensor.device.type != "cuda":
        return torch_backend  # never the Triton interpreter on CPU tensors unless asked for
    module, reason = import_triton()
    if module is not None:
        reason = module.unavailable_reason(tensor)
        if reason is None and k is not None and k > module.MAX_K:
            reason = (
                f"{k_name} = {k} is above the {module.MAX_K} neighbours per query that they keep in "
                "registers (the torch backend gives identical results)"
            )
    if module is not None and reason is None:
        return module
    if backend == "triton":
        raise RuntimeError(
            f"backend='triton' was requested{origin}, but the Triton kernels cannot run here: {reason}. "
            "Use backend='torch' or backend='auto' to run the pure-PyTorch implementation."
        )
    return torch_backend


def backend_name(module: BackendModule) -> Literal["torch", "triton"]:
    """``"torch"`` or ``"triton"``: the name of a module :func:`select_backend` returned."""
    return "torch" if module is torch_backend else "triton"


def backend_module(name: str) -> BackendModule:
    """The backend module called ``name`` (``"torch"`` or ``"triton"``, from :func:`backend_name`).

    Raises:
        RuntimeError: if ``name`` is ``"triton"`` and :mod:`pointpeft.ops.triton_backend` cannot be
            imported.
    """
    if name == "torch":
        return torch_backend
    module, reason = import_triton()
    if module is None:
        raise RuntimeError(f"the triton backend cannot run here: {reason}")
    return module
