"""Exact (integer) evaluation of the networks that produce entropy-coding parameters.

Decoding a learned codec is only safe if the decoder computes *bit-identical* Gaussian
scales and means to the encoder's. Float convolutions do not promise that across devices,
thread counts or batch shapes (CompressAI issues 279, 309, 235, 320). Following Ballé et
al., "Integer networks for data compression" (ICLR 2019), this module evaluates those
networks on integers:

* activations are fixed-point numbers with ``ACT_BITS`` fractional bits, weights with
  ``WEIGHT_BITS`` (both quantised once from the trained float weights);
* a convolution is an im2col matrix product in float64 over integer operands; every
  partial sum stays below 2**53, so the result is exact whatever the summation order,
  kernel, thread count or device (CPU, or a GPU's FP64 units);
* after each layer the accumulator is rescaled by a power of two and floored (exact), and
  ReLU is exact.

Only Conv2d (masked checkerboard convs included), ConvTranspose2d, ReLU, Identity and
Sequential appear in the parameter networks, and only those are supported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACT_BITS = 8  # activations and means live on a grid of 1/256
WEIGHT_BITS = 12  # weights on a grid of 1/4096
ACT_LIMIT = 2.0**23  # |activation| * 2**ACT_BITS is clamped here
WEIGHT_LIMIT = 2.0**15 - 1
MAX_FAN_IN = 2**14  # 2**23 * 2**15 * 2**14 = 2**52 < 2**53: every sum is exact in float64

_ACT_SCALE = 2.0**ACT_BITS
_WEIGHT_SCALE = 2.0**WEIGHT_BITS


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor onto the activation grid (float64 values k / 2**ACT_BITS)."""
    return torch.round(x.double() * _ACT_SCALE).clamp_(-ACT_LIMIT, ACT_LIMIT) / _ACT_SCALE


class _ExactConv:
    """A conv layer's integer weights, and its exact evaluation on grid activations."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d):
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise NotImplementedError(f"exact path supports plain convs only, got {conv}")
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.stride, self.padding = conv.stride, conv.padding
        self.output_padding = getattr(conv, "output_padding", (0, 0))
        w = conv.weight.detach()
        if isinstance(getattr(conv, "mask", None), torch.Tensor):
            w = w * conv.mask  # checkerboard context convs: masked taps are exactly zero
        self.weight = torch.round(w.double() * _WEIGHT_SCALE).clamp_(-WEIGHT_LIMIT, WEIGHT_LIMIT)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[1 if self.transposed else 0])
        self.bias = torch.round(bias.double() * _WEIGHT_SCALE * _ACT_SCALE)
        kh, kw = w.shape[-2:]
        fan_in = (w.shape[0] if self.transposed else w.shape[1]) * kh * kw
        if fan_in > MAX_FAN_IN:
            raise ValueError(f"fan-in {fan_in} exceeds {MAX_FAN_IN}: sums could leave float64's exact range")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.round(x * _ACT_SCALE)  # integers, exact
        w, b = self.weight.to(a.device), self.bias.to(a.device)
        kh, kw = w.shape[-2:]
        n, _, h, wd = a.shape
        if not self.transposed:
            cols = F.unfold(a, (kh, kw), padding=self.padding, stride=self.stride)  # (N, Cin*k*k, L)
            acc = torch.matmul(w.reshape(w.shape[0], -1), cols)  # (N, Cout, L), exact integer sums
            oh = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
            ow = (wd + 2 * self.padding[1] - kw) // self.stride[1] + 1
            acc = acc.reshape(n, -1, oh, ow)
        else:
            # Transposed conv = scatter-add of per-pixel kernel products (col2im); the adds are exact.
            cin, cout = w.shape[:2]
            cols = torch.matmul(w.reshape(cin, -1).t(), a.reshape(n, cin, -1))  # (N, Cout*k*k, H*W)
            oh = (h - 1) * self.stride[0] - 2 * self.padding[0] + kh + self.output_padding[0]
            ow = (wd - 1) * self.stride[1] - 2 * self.padding[1] + kw + self.output_padding[1]
            full = F.fold(cols, (oh + 2 * self.padding[0], ow + 2 * self.padding[1]), (kh, kw),
                          stride=self.stride)
            acc = full[..., self.padding[0]:self.padding[0] + oh, self.padding[1]:self.padding[1] + ow]
        acc = acc + b.view(1, -1, 1, 1)
        # Back to the activation grid: divide by 2**WEIGHT_BITS (exact) and floor (exact).
        out = torch.floor(acc / _WEIGHT_SCALE).clamp_(-ACT_LIMIT, ACT_LIMIT)
        return out / _ACT_SCALE


class ExactNetwork:
    """An integer copy of a small conv network, evaluated exactly on grid tensors."""

    def __init__(self, module: nn.Module):
        self.steps = list(_compile(module))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = to_grid(x)
        for step in self.steps:
            x = step(x)
        return x


def _compile(module: nn.Module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _compile(child)
    elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        yield _ExactConv(module)
    elif isinstance(module, nn.ReLU):
        yield torch.relu
    elif isinstance(module, nn.Identity):
        return
    else:
        raise NotImplementedError(f"{type(module).__name__} has no exact integer form; the entropy-parameter "
                                  f"networks may use Conv2d, ConvTranspose2d, ReLU and Sequential only")
