"""LoRA's input dropout without its memory: the mask is made again from a seed in the backward pass.

peft computes `lora_A(dropout(x))` per adapted layer. nn.Dropout keeps its output (a copy of x) and
its mask for the backward pass, so q, k and v (and gate and up), which without dropout share one
saved input, each keep a copy of it and a mask. During training, `seeded_lora_dropout` folds the
dropout into lora_A: the forward draws a seed from torch's generator (so `seed` reproduces a run and
a checkpointed layer's recompute draws the same one), zeroes x where the mask made from that seed
says so, and keeps only x and the seed; the backward makes the same mask again.

The mask comes from 16-bit random integers, four per 64-bit draw (the drop rate is p to within
1/65536): on a CPU, torch's per-element Bernoulli draw takes longer than the layer's base matmul.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from torch import nn


def keep_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> torch.Tensor:
    """True where an element survives dropout p: the same mask for the same (shape, p, seed)."""
    n = math.prod(shape)
    generator = torch.Generator(device=device).manual_seed(seed)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(2**63), 2**63 - 1, generator=generator)
    return draws.view(torch.int16)[:n].view(shape) >= -(2**15) + round(p * 2**16)


class DroppedLinear(torch.autograd.Function):
    """dropout(x, p) @ weight.T, keeping x (which the layer's other adapters share) and a seed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        device = x.device.type
        # the dtype autocast would compute in; the matmuls below run in it with autocast off
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed, ctx.dtype = p, seed, dtype
        keep = keep_mask(x.shape, p, seed, x.device)
        with torch.autocast(device, enabled=False):
            # 1/(1-p) scales the rank-r output, not the wide input
            return F.linear(torch.where(keep, x.to(dtype), 0), weight.to(dtype)) / (1 - p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        keep = keep_mask(x.shape, ctx.p, ctx.seed, x.device)
        grad = grad.to(ctx.dtype) / (1 - ctx.p)
        grad_x = grad_w = None
        with torch.autocast(x.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = torch.where(keep, grad @ weight.to(ctx.dtype), 0).to(x.dtype)
            if ctx.needs_input_grad[1]:
                dropped = torch.where(keep, x.to(ctx.dtype), 0).reshape(-1, x.shape[-1])
                grad_w = (grad.reshape(-1, grad.shape[-1]).T @ dropped).to(weight.dtype)
        return grad_x, grad_w, None, None


class DroppedLoraA(nn.Linear):
    """A LoRA A matrix with its input dropout folded in: the same weight under the same name."""

    def __init__(self, lora_a: nn.Linear, p: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.p = lora_a.in_features, lora_a.out_features, p
        self.weight = lora_a.weight
        self.register_parameter("bias", None)
        self.train(lora_a.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        seed = int(torch.randint(2**62, ()))
        return DroppedLinear.apply(x, self.weight, self.p, seed)


@contextmanager
def seeded_lora_dropout(model: nn.Module) -> Iterator[int]:
    """Within: every plain LoRA adapter with dropout > 0 (not DoRA or other variants, whose forward
    applies the dropout itself) drops through DroppedLoraA; after: peft's modules again. Yields how
    many adapters it changed."""
    swapped = []
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name, dropout in list(layer.lora_dropout.items()):
            lora_a = layer.lora_A[name] if name in layer.lora_A else None
            plain = type(lora_a) is nn.Linear and name not in layer.lora_variant
            if plain and isinstance(dropout, nn.Dropout) and dropout.p > 0:
                layer.lora_A[name], layer.lora_dropout[name] = DroppedLoraA(lora_a, dropout.p), nn.Identity()
                swapped.append((layer, name, lora_a, dropout))
    try:
        yield len(swapped)
    finally:
        for layer, name, lora_a, dropout in swapped:
            training = layer.lora_A[name].training  # the mode the model was left in
            layer.lora_A[name], layer.lora_dropout[name] = lora_a.train(training), dropout.train(training)
