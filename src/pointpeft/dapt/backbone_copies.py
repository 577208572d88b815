"""Per-adapter copies of the backbone tensors that adapters change in place: the trainable CLS token and
positional embedding, the running statistics of BatchNorm layers (updated in train mode), and the backbone
parameters a method trains (BitFit's biases, every parameter of full fine-tuning).

The backbone reads these tensors as its own attributes (``self.cls_token``), so they cannot be wrapped;
instead each adapter keeps its own tensor objects and the active adapter's are installed in the backbone.
The pre-trained values are kept too, for running the bare backbone (``disable_adapter``) and for starting
new adapters.
"""

from __future__ import annotations

import torch
from torch import nn


def _mangle(path: str) -> str:
    return path.replace(".", "__")


def _owner(backbone: nn.Module, path: str) -> tuple[nn.Module, str]:
    module_path, _, attr = path.rpartition(".")
    return (backbone.get_submodule(module_path) if module_path else backbone), attr


def get_tensor(backbone: nn.Module, path: str) -> torch.Tensor:
    """The parameter or buffer of ``backbone`` at the dotted ``path``."""
    module, attr = _owner(backbone, path)
    found: torch.Tensor | None = module._parameters.get(attr)
    if found is None:
        found = module._buffers.get(attr)
    if found is None:
        raise ValueError(f"the backbone has no tensor at {path!r}")
    return found


def _member(holder: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of a holder module."""
    value: torch.Tensor | None = holder._parameters.get(name)
    if value is None:
        value = holder._buffers.get(name)
    if value is None:
        raise KeyError(name)
    return value


def _holds(holder: nn.Module, name: str) -> bool:
    return name in holder._parameters or name in holder._buffers


def _put(backbone: nn.Module, path: str, tensor: torch.Tensor) -> None:
    module, attr = _owner(backbone, path)
    if attr in module._parameters:
        module._parameters[attr] = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False)
    else:
        module._buffers[attr] = tensor


class BackboneCopies(nn.Module):
    """The pre-trained values (``base``, buffers) and the inactive adapters' tensors (``stored[name]``).

    Args:
        backbone: the (frozen) backbone; its current values become the pre-trained ones.
        token_paths: parameters DAPT trains (e.g. ``("cls_token", "cls_pos")``).
        buffer_paths: buffers that change in train mode (BatchNorm ``running_mean``, ``running_var``,
            ``num_batches_tracked``).

    Every adapter has its own tensors at ``token_paths`` and ``buffer_paths``. The backbone parameters some
    adapter trains (:meth:`add_trained`, ``trained_paths``) are copied only for the adapters that train
    them; the others run them at their pre-trained values.
    """

    def __init__(
        self, backbone: nn.Module, token_paths: tuple[str, ...], buffer_paths: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.token_paths = tuple(token_paths)
        self.buffer_paths = tuple(buffer_paths)
        self.trained_paths: tuple[str, ...] = ()
        self.base = nn.Module()
        for path in self.paths:
            self.base.register_buffer(_mangle(path), get_tensor(backbone, path).detach().clone())
        self.stored = nn.ModuleDict()

    @property
    def paths(self) -> tuple[str, ...]:
        return self.token_paths + self.buffer_paths + self.trained_paths

    def add_trained(self, backbone: nn.Module, paths: tuple[str, ...], originals: nn.Module) -> None:
        """Make the backbone parameters at ``paths`` per-adapter (an adapter to be added trains them): keep
        their pre-trained values, and put the parameter objects installed now (the backbone's own, as no
        adapter trains them yet) into ``originals``, what unloading puts back. Paths already per-adapter are
        left as they are."""
        for path in paths:
            if path in self.paths:
                continue
            tensor = get_tensor(backbone, path)
            if not isinstance(tensor, nn.Parameter):
                raise ValueError(f"only parameters can be trained per adapter, {path!r} is a buffer")
            self.base.register_buffer(_mangle(path), tensor.detach().clone())
            originals.register_parameter(_mangle(path), tensor)
            self.trained_paths += (path,)

    def base_value(self, path: str) -> torch.Tensor:
        return self.base.get_buffer(_mangle(path))

    def new_copies(self, trained: tuple[str, ...] = ()) -> nn.Module:
        """A fresh set of tensors for a new adapter, starting from the pre-trained values: the tokens, the
        buffers, and the ``trained`` paths (of :attr:`trained_paths`) the adapter trains."""
        holder = nn.Module()
        for path in self.token_paths + trained:
            holder.register_parameter(_mangle(path), nn.Parameter(self.base_value(path).clone(), False))
        for path in self.buffer_paths:
            holder.register_buffer(_mangle(path), self.base_value(path).clone())
        return holder

    def take(self, backbone: nn.Module, trained: tuple[str, ...] = ()) -> nn.Module:
        """The tensors installed in ``backbone`` now at the tokens, the buffers and the ``trained`` paths, as a
        holder module (the objects themselves)."""
        holder = nn.Module()
        for path in self.token_paths + trained:
            tensor = get_tensor(backbone, path)
            holder.register_parameter(
                _mangle(path), tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False)
            )
        for path in self.buffer_paths:
            holder.register_buffer(_mangle(path), get_tensor(backbone, path))
        return holder

    def install(self, backbone: nn.Module, holder: nn.Module | None) -> None:
        """Put ``holder``'s tensors into ``backbone``; None installs the pre-trained values, as does a holder
        without one of the :attr:`trained_paths` (an adapter that does not train it)."""
        for path in self.paths:
            name = _mangle(path)
            untrained = holder is None or (path in self.trained_paths and not _holds(holder, name))
            _put(backbone, path, _member(self.base if untrained or holder is None else holder, name))

    def tensor(self, backbone: nn.Module, path: str, adapter: str, active: str | None) -> torch.Tensor:
        """Adapter ``adapter``'s tensor at ``path`` (installed in the backbone if it is active)."""
        if adapter == active:
            return get_tensor(backbone, path)
        return _member(self.stored[adapter], _mangle(path))


class CopiesLink:
    """What the wrappers of one model share: a reference to the model's :class:`BackboneCopies` (None once
    the model is unloaded), so that code holding only the wrapped backbone (loading pre-trained weights into
    it) can refresh the kept pre-trained values. A plain object, not a module: it adds no state-dict entry."""

    def __init__(self, copies: BackboneCopies | None = None) -> None:
        self.copies = copies

    def __repr__(self) -> str:
        return f"CopiesLink({'set' if self.copies is not None else 'empty'})"
