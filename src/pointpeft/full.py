"""Full fine-tuning of the same backbone and head: the baseline DAPT is compared against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pointpeft.backbones.point_mae import Attention
from pointpeft.checks import check_fraction, check_input_dtype, check_positive_int, check_type
from pointpeft.config import check_pool
from pointpeft.counting import count_parameters, print_trainable_parameters
from pointpeft.dapt.head import PooledHead
from pointpeft.dapt.layout import BackboneLayout, detect_layout
from pointpeft.dapt.presets import preset_layout

_EXECUTIONS = ("fused", "plain")


class FullFinetuneModel(nn.Module):
    """A backbone with every parameter trainable and the pooled head of DAPT (without prompts).

    The final tokens are read at the output of the layout's final norm (a forward hook; the backbone is
    not modified), so the backbone's own forward runs unchanged, as the reference's full fine-tuning does.

    Attributes:
        base_model: the backbone.
        head: the :class:`~pointpeft.dapt.head.PooledHead`.
        layout: where the final norm and the global tokens are.

    Shapes:
        forward: ``points (B, N, 3)`` → logits ``(B, K)``.
    """

    def __init__(self, base_model: nn.Module, head: PooledHead, layout: BackboneLayout) -> None:
        super().__init__()
        if layout.final_norm is None:
            raise ValueError(
                "full_finetune needs a final norm in the layout, where it reads the final tokens"
            )
        self.base_model = base_model
        self.head = head
        self.layout = layout
        self._tokens: list[torch.Tensor] = []
        base_model.get_submodule(layout.final_norm).register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._tokens.append(output.transpose(0, 1) if self.layout.seq_first else output)

    def forward_features(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The final tokens ``(B, T, C)`` for ``points (B, N, 3)`` (and any further arguments of the
        backbone).

        Raises:
            TypeError: if ``points`` is a floating tensor of another dtype than the parameters (convert it
                with ``points.float()``, or the model with ``model.double()``).
        """
        check_input_dtype("points", points, self.base_model)
        self._tokens.clear()
        try:
            self.base_model(points, *args, **kwargs)
            if not self._tokens:
                raise RuntimeError(
                    f"the backbone's forward did not call its final norm ({self.layout.final_norm!r})"
                )
            return self._tokens[-1]
        finally:
            self._tokens.clear()

    def forward(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits ``(B, K)`` for ``points (B, N, 3)``; the inputs are checked as by :meth:`forward_features`."""
        return self.head(self.forward_features(points, *args, **kwargs))

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)``, as :func:`pointpeft.count_parameters`."""
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        print_trainable_parameters(self)


def full_finetune(
    backbone: nn.Module,
    num_classes: int,
    *,
    pool: Sequence[str] = ("cls", "patch"),
    head_hidden: int = 256,
    head_dropout: float = 0.5,
    layout: BackboneLayout | str | None = None,
    execution: str = "fused",
) -> FullFinetuneModel:
    """The reference's full fine-tuning baseline: every backbone parameter trains, with the Point-MAE head
    on the pooled CLS token and patch tokens.

    For :class:`pointpeft.backbones.PointMAE` at its defaults with 15 classes this has 22,093,327
    parameters, all trainable (the reference's full fine-tuning count).

    Args:
        backbone: the backbone (modified only in that its parameters are set trainable).
        num_classes: K.
        pool: which features the head concatenates: a subset of ``("cls", "patch")`` (there are no
            prompts).
        head_hidden: width of the head's hidden layers.
        head_dropout: dropout of the head's hidden layers.
        layout: the backbone's layout (detected when None, or a preset name), for the final norm and the
            global tokens.
        execution: ``"fused"`` computes the attention of :class:`pointpeft.backbones.PointMAE` blocks with
            ``scaled_dot_product_attention`` (the same function, less memory); ``"plain"`` is the reference
            computation (unfused attention). Other backbones run their own forward either way.

    Raises:
        TypeError / ValueError: for a non-module backbone or bad settings (``pool`` with ``"prompt"``).
    """
    if execution not in _EXECUTIONS:
        raise ValueError(f"execution must be one of {_EXECUTIONS} for full fine-tuning, got {execution!r}")
    check_type("backbone", backbone, nn.Module, "a torch.nn.Module")
    check_positive_int("num_classes", num_classes)
    check_positive_int("head_hidden", head_hidden)
    check_fraction("head_dropout", head_dropout)
    pool = check_pool(pool)
    if "prompt" in pool:
        raise ValueError(
            f"pool must not contain 'prompt' for full fine-tuning (there are no prompts), got {pool}"
        )
    if layout is None:
        layout = detect_layout(backbone)
    elif isinstance(layout, str):
        layout = preset_layout(layout, backbone)
    if layout.final_norm is None:
        raise ValueError("full_finetune needs a final norm in the layout, where it reads the final tokens")
    norm = backbone.get_submodule(layout.final_norm)
    shape = getattr(norm, "normalized_shape", None)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(
            f"full_finetune reads the token width from the final norm's normalized_shape, but "
            f"{layout.final_norm!r} ({type(norm).__name__}) has none: give a layout whose final_norm is a "
            "LayerNorm-like module"
        )
    dim = int(shape[-1])
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    for module in backbone.modules():
        if isinstance(module, Attention):
            module.fused = execution == "fused"
    reference = next(backbone.parameters())
    head = PooledHead(
        dim,
        num_classes,
        pool,
        layout.num_global_tokens,
        head_hidden,
        head_dropout,
        cls_index=layout.cls_index,
    ).to(device=reference.device, dtype=reference.dtype)
    return FullFinetuneModel(backbone, head, layout)
