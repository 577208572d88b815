"""A whole training step replayed as one CUDA graph.

An eager training step of DAPT launches about 1,800 small kernels (TFTS, adapters, prompts, their
gradients); on an H200 the CPU takes as long to launch them as the GPU takes to run them, and under bf16
it takes longer. :class:`CUDAGraphStep` records the step once (forward, loss, backward, optimizer step) and
then replays it with one launch, so the step costs what the GPU does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pointpeft.checks import check_callable, check_int, check_real, check_type
from pointpeft.dapt.model import add_auxiliary_loss, clear_auxiliary_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The plain-number settings of each parameter group (lr, weight decay, betas, ...): what a captured
    optimizer step has baked in."""
    snapshot = []
    for group in optimizer.param_groups:
        snapshot.append(
            {
                k: v
                for k, v in group.items()
                if k != "params" and isinstance(v, (bool, int, float, tuple, type(None)))
            }
        )
    return snapshot


Entry = tuple[Any, Any, Any]  # (mapping, key, what the mapping held there when the step was recorded)
_PLAIN = (bool, int, float, complex, str, type(None))


def _plain(value: Any) -> bool:
    """A plain-Python setting (a number, a string, None, or a tuple of those)."""
    return isinstance(value, _PLAIN) or (type(value) is tuple and all(_plain(v) for v in value))


def _shared_object(value: Any) -> bool:
    """A plain-Python object a module holds beside its submodules, parameters and buffers (a settings
    object shared by several modules, such as a DAPT model's prompt stash)."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (nn.Module, torch.Tensor, type))
        and not callable(value)
    )


def _unchanged(value: Any, recorded: Any) -> bool:
    """``value`` is the plain setting ``recorded`` (the same object, or an equal plain value)."""
    return value is recorded or (_plain(value) and value == recorded)


_MISSING = object()


class Bindings:
    """What a recorded step reads by address or has baked in, besides the batch and the optimizer's
    plain-number settings: every submodule, parameter and buffer of the model (the object in its slot and
    the storage behind it), which parameters ask for gradients, the optimizer's state tensors, and the
    plain settings of every module and of the objects they share (``training``, dropout probabilities,
    the active adapter and execution of a DAPT model).

    A replay reads the live values of each storage, so an in-place change (through ``.data``,
    ``load_state_dict``, a numpy view, anything) is seen. A storage or object replaced (``p.data = other``,
    ``set_()``, ``optimizer.load_state_dict``, a new module) or a setting changed is not: the graph would go
    on reading the old, possibly freed, memory and computing the old function. :meth:`hold` says whether
    nothing of that changed.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        same: list[Entry] = []  # the slot must still hold this very object
        equal: list[Entry] = []  # the slot must still hold an equal plain value
        shared: dict[int, Any] = {}
        for module in model.modules():
            for table in (module._modules, module._parameters, module._buffers):
                same += [(table, k, v) for k, v in table.items()]
            for k, v in module.__dict__.items():
                if _plain(v):
                    equal.append((module.__dict__, k, v))
                elif _shared_object(v):
                    same.append((module.__dict__, k, v))
                    shared[id(v)] = v
        for obj in shared.values():
            equal += [(obj.__dict__, k, v) for k, v in obj.__dict__.items() if _plain(v)]
        same.append((optimizer.__dict__, "state", optimizer.state))
        same.append((optimizer.__dict__, "param_groups", optimizer.param_groups))
        for group in optimizer.param_groups:
            same += [(group, k, v) for k, v in group.items() if isinstance(v, (torch.Tensor, list))]
        for state in optimizer.state.values():
            same += [(state, k, v) for k, v in state.items() if isinstance(v, torch.Tensor)]
        self.same, self.equal = same, equal
        self.tensors = [(v, v.data_ptr(), v.requires_grad) for _, _, v in same if isinstance(v, torch.Tensor)]

    def hold(self) -> bool:
        """Whether every slot still holds the same object or an equal setting, and every tensor the same
        storage."""
        return (
            all(table.get(k) is v for table, k, v in self.same)
            and all(_unchanged(table.get(k, _MISSING), v) for table, k, v in self.equal)
            and all(t.data_ptr() == ptr and t.requires_grad is grad for t, ptr, grad in self.tensors)
        )


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream() -> torch.cuda.Stream:
    """One side stream per device for every warm-up and capture: each new stream would get (and keep) its
    own cuBLAS workspace."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream()
    return _SIDE_STREAMS[index]


def _check_optimizer(optimizer: Any) -> None:
    check_type("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    for i, group in enumerate(optimizer.param_groups):
        if group.get("capturable") is False and not group.get("fused"):
            raise ValueError(
                f"optimizer must be built with capturable=True to run inside a CUDA graph (its step count "
                f"then lives on the GPU), e.g. torch.optim.AdamW(params, lr=..., capturable=True); "
                f"param group {i} has capturable=False"
            )


def _check_devices(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.device.type != "cuda":
                raise ValueError(
                    f"every parameter the optimizer updates must be on a CUDA device, got one on {p.device}"
                )
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.device.type != "cuda":
            raise ValueError(f"the model must be on a CUDA device (model.cuda()); {name} is on {t.device}")


class CUDAGraphStep:
    """Forward, loss, backward and optimizer step of ``model``, captured as one CUDA graph and replayed.

    The first ``warmup`` calls run eagerly on a side stream (CUDA graphs need the libraries' lazy setup done
    before capture); the next call records the step and replays it, and every later call replays it. Every
    call is a real training step on the batch it is given. Results are the same as the eager step's: the
    graph replays the same kernels. Dropout and DropPath draw fresh random numbers at each replay.

    The step is recorded for one batch shape: each call copies its batch into the graph's input buffers.
    The replays read the live weights and optimizer state: a change of their values in place (however it
    is made) is seen by the next step. Whatever the graph has baked in is checked at each call, and the
    next call records the step again when it changed: a plain-number setting of the optimizer (a
    learning-rate schedule writing ``lr``), a tensor given new storage (``p.data = other``,
    ``optimizer.load_state_dict``), a module, parameter or buffer replaced, ``model.train()`` /
    ``model.eval()``, ``requires_grad`` (:class:`Bindings`).

    Args:
        model: the module to train (a :class:`~pointpeft.DAPTModel`, a full fine-tuning model, any
            module), on a CUDA device, in the mode it should train in.
        optimizer: the optimizer of its trainable parameters, built with ``capturable=True`` where it has
            that option (``torch.optim.AdamW(params, lr=..., capturable=True)``).
        loss_fn: ``loss_fn(output, targets)`` → scalar loss; the output is cast to float32 first. The
            step minimises it plus the auxiliary loss the model's forward makes, where it makes one
            (PointLoRA's mask loss: :func:`pointpeft.add_auxiliary_loss`), as ``pointpeft train`` does.
        autocast_dtype: None for float32, or ``torch.bfloat16`` to run the forward under
            ``torch.autocast``.
        warmup: eager calls before the capture (at least 1).
        max_grad_norm: if given, clip the gradients' global L2 norm to it before the optimizer step
            (``torch.nn.utils.clip_grad_norm_``).

    Shapes:
        ``step(inputs, targets)``: ``inputs`` (B, N, 3) (any shape the model takes, fixed across calls) and
        ``targets`` (B,) → ``(loss, output)``: the loss ``()`` and the model output (B, K), both float32.
        They are the graph's own buffers, overwritten by the next call: clone them to keep them.

    Example::

        optimizer = torch.optim.AdamW(trainable, lr=5e-4, capturable=True)
        step = pointpeft.CUDAGraphStep(model, optimizer, torch.nn.functional.cross_entropy,
                                       autocast_dtype=torch.bfloat16)
        for points, labels in loader:   # drop_last=True: one batch shape
            loss, logits = step(points.cuda(), labels.cuda())
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        *,
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 3,
        max_grad_norm: float | None = None,
    ) -> None:
        check_type("model", model, nn.Module, "a torch.nn.Module")
        check_callable("loss_fn", loss_fn)
        _check_optimizer(optimizer)
        if not torch.cuda.is_available():
            raise ValueError("CUDAGraphStep needs a CUDA device; torch.cuda.is_available() is False")
        _check_devices(model, optimizer)
        if autocast_dtype is not None and autocast_dtype != torch.bfloat16:
            raise ValueError(
                f"autocast_dtype must be None or torch.bfloat16 (float16 would need loss scaling), got {autocast_dtype}"
            )
        warmup = check_int("warmup", warmup, 1)
        if max_grad_norm is not None:
            max_grad_norm = check_real(
                "max_grad_norm", max_grad_norm, "None or a finite number > 0", lambda v: v > 0
            )
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        self.max_grad_norm = max_grad_norm
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.captures = 0
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the graph's input buffers
        self._outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._settings: list[dict[str, Any]] | None = None
        self._bindings: Bindings | None = None
        self._trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager step, on the current stream: ``(loss, output)``."""
        enabled = self.autocast_dtype is not None
        clear_auxiliary_loss(self.model)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled, cache_enabled=False):
            output = self.model(inputs)
        output = output.float()
        loss = add_auxiliary_loss(self.model, self.loss_fn(output, targets))
        loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._trainable, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach(), output.detach()

    def _check_batch(self, inputs: Any, targets: Any) -> None:
        for name, value in (("inputs", inputs), ("targets", targets)):
            check_type(name, value, torch.Tensor, "a torch.Tensor")
            if value.device.type != "cuda":
                raise ValueError(f"{name} must be on a CUDA device, got a tensor on {value.device}")
        if self._batch is not None:
            for name, value, kept in zip(("inputs", "targets"), (inputs, targets), self._batch, strict=True):
                if value.shape != kept.shape or value.dtype != kept.dtype or value.device != kept.device:
                    raise ValueError(
                        f"{name} must keep the shape, dtype and device the step was recorded with, "
                        f"{tuple(kept.shape)} {kept.dtype} on {kept.device}; got {tuple(value.shape)} "
                        f"{value.dtype} on {value.device} (use drop_last=True in the DataLoader, or a new "
                        "CUDAGraphStep for another batch shape)"
                    )
        if inputs.is_floating_point() and inputs.dim() == 3 and inputs.shape[-1] == 3:
            # Point clouds (B, N, 3): the grouping ops check their range when they run eagerly, but a replay
            # runs no Python, so the same check happens here.
            from pointpeft.ops import check_coordinates

            check_coordinates(inputs, "inputs")
        elif inputs.is_floating_point() and inputs.numel():
            low, high = torch.aminmax(inputs.detach())
            if not (math.isfinite(float(low)) and math.isfinite(float(high))):
                raise ValueError("inputs must contain only finite values, got NaN or inf")

    def _capture(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.graph = None
        self.optimizer.zero_grad(set_to_none=True)  # the gradients are then allocated inside the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=_side_stream()):
            self._outputs = self._step(inputs, targets)
        self.graph = graph
        self._settings = _hyperparameters(self.optimizer)
        self._bindings = Bindings(self.model, self.optimizer)
        self.captures += 1

    def _recorded_step_holds(self) -> bool:
        """Whether the recorded graph still computes the step of the model and optimizer as they are."""
        return (
            self.graph is not None
            and self._bindings is not None
            and self._bindings.hold()
            and _hyperparameters(self.optimizer) == self._settings
        )

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        holds = self._recorded_step_holds()  # host work, before the batch check waits for the GPU
        self._check_batch(inputs, targets)
        if self._batch is None:
            self._batch = (inputs.detach().clone(), targets.detach().clone())
        kept_inputs, kept_targets = self._batch
        self.calls += 1
        if self.calls <= self.warmup:
            side = _side_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                kept_inputs.copy_(inputs)
                kept_targets.copy_(targets)
                self.optimizer.zero_grad(set_to_none=True)
                loss, output = self._step(kept_inputs, kept_targets)
            torch.cuda.current_stream().wait_stream(side)
            return loss, output
        kept_inputs.copy_(inputs)
        kept_targets.copy_(targets)
        if not holds:
            self._capture(kept_inputs, kept_targets)
        assert self.graph is not None and self._outputs is not None
        self.graph.replay()
        return self._outputs
