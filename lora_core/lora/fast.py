"""The fast training path of a LoRA layer whose base is frozen.

The textbook layer computes
    y = x W^T + b + s * (x A^T) B^T          (s the adapter's scale; x passes dropout first on the side path)
and autograd differentiates it as written. That formula stays the reference: evaluation and prediction run
it as is (LoraLinear.forward), and the tests hold this path to it. While training with W and b frozen, the
same y comes from FrozenBaseLoraFunction, one autograd node whose backward computes only the gradients
of A, B and x; under autocast the frozen W and b are cast to the autocast dtype once and kept while they
are unchanged (cast_frozen_base).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off where it is on; elsewhere nothing (entering torch.autocast costs about 8 us)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FrozenBaseLoraFunction(torch.autograd.Function):
    """y = x W^T + b + (s A^T) B^T * scale with W and b frozen, s = dropout(x) (or x itself), for training.

    Autograd through the plain formula spends a step's time on work a frozen base does not need: the
    in-place sum of the side path into a view of the output is replayed backward by copying and zeroing
    the whole (batch, out_features) gradient, the scale multiplies full-size tensors, and the input's
    gradient from the side path is a second (batch, in_features) tensor added to the base's. Here the
    backward computes only the matmuls that must run:
        dB = scale g^T (s A^T)                         (out x r; s A^T saved from the forward)
        dA = scale (g B)^T s                           (r x in)
        dx = g W + scale (g B) A                       one addmm, only where x needs a gradient
    and never a gradient for W or b. `weight` and `bias` arrive already in the dtype the base matmuls run
    in (under autocast, bfloat16 copies that LoraLinear keeps while W is unchanged); the side path, the sum
    and every gradient stay in the adapter's dtype (float32): in bfloat16 the small update would round away
    beside the base output.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        x_side: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        with autocast_off(x.device.type):
            out = F.linear(x if x.dtype == weight.dtype else x.to(weight.dtype), weight, bias)
            if out.dtype != b.dtype:
                out = out.to(b.dtype)
            side = x if x_side is None else x_side
            if side.dtype != a.dtype:
                side = side.to(a.dtype)
            # the skinny products are taken in the orientation whose result is (r, ...) and read through
            # a transposed view: measured 2-4x faster here than the (..., r) orientation
            xa = torch.mm(a, side.t()).t()
            out.addmm_(xa, b.t(), alpha=scale)
        ctx.save_for_backward(side, xa, weight, a, b)
        ctx.scale = scale
        ctx.x_dtype = x.dtype
        ctx.side_dtype = None if x_side is None else x_side.dtype
        return out

    @staticmethod
    @once_differentiable  # x A^T is saved outside autograd: a second derivative would treat it as a constant
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        side, xa, weight, a, b = ctx.saved_tensors
        scale = ctx.scale
        need_x, need_side, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        grad_x = grad_side = grad_a = grad_b = None
        with autocast_off(grad.device.type):
            if grad.dtype != b.dtype:
                grad = grad.to(b.dtype)
            if need_b:
                grad_b = torch.mm(xa.t(), grad).t().mul_(scale)
            grad_xa = torch.mm(b.t(), grad.t()).t().mul_(scale)  # (batch, r): scaling it here is cheap
            if need_a:
                grad_a = torch.mm(grad_xa.t(), side)
            if need_x:
                grad_x = torch.mm(grad if grad.dtype == weight.dtype else grad.to(weight.dtype), weight)
                if grad_x.dtype != a.dtype:
                    grad_x = grad_x.to(a.dtype)
                if ctx.side_dtype is None:  # the side path read x itself: its gradient joins the same sum
                    grad_x.addmm_(grad_xa, a)
                if grad_x.dtype != ctx.x_dtype:
                    grad_x = grad_x.to(ctx.x_dtype)
            if need_side:
                grad_side = torch.mm(grad_xa, a)
                if grad_side.dtype != ctx.side_dtype:
                    grad_side = grad_side.to(ctx.side_dtype)
        return grad_x, grad_side, None, None, grad_a, grad_b, None


@dataclass
class BaseCast:
    """A frozen base layer's W and b cast to `dtype`, with what they were made from."""

    dtype: torch.dtype
    sources: list[tuple[torch.Tensor, int, int]]  # (tensor, data_ptr, version) of W, then b
    weight: torch.Tensor
    bias: torch.Tensor | None


def cast_frozen_base(
    cached: BaseCast | None, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> BaseCast:
    """`cached` where it is still W and b cast to `dtype`, else a fresh cast.

    Autocast casts W again on every forward (2M float32 values read, 2M bfloat16 written for linear2,
    measured at over 10% of a bfloat16 LoRA step here). W and b are frozen, so the copy is kept and
    made again only when either changes: another tensor, new storage, or an in-place write, which bumps
    the tensor's version counter. That counter (`_version`) is private to PyTorch, which offers no public
    one: test_bf16_cast_of_the_frozen_base_is_kept_and_renewed_when_the_base_changes fails if it stops
    counting in-place writes.
    """
    # the sources are held (not only their addresses), so a new tensor can never reuse a cached one's
    state = [(t, t.data_ptr(), t._version) for t in (weight, bias) if t is not None]
    if (
        cached is not None
        and cached.dtype == dtype
        and len(cached.sources) == len(state)
        and all(t is c and p == cp and v == cv for (t, p, v), (c, cp, cv) in zip(state, cached.sources))
    ):
        return cached
    with torch.no_grad():
        cast_bias = None if bias is None else bias.detach().to(dtype)
        return BaseCast(dtype, state, weight.detach().to(dtype), cast_bias)
