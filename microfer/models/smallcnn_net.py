"""The torch layers of `microfer.models.smallcnn` (imported only when a network is built)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3


class SmallCNNEnsemble(nn.Module):
    """M STSTNet-shaped members as one module: (B, 3, S, S) -> logits (B, M, classes).

    The convolution is a matrix product over 3x3 patches (`patches`), so a caller that
    trains for many epochs on the same images cuts the patches once (`forward_patches`).
    """

    def __init__(self, spec, n_classes: int, seeds: tuple[int, ...]):
        super().__init__()
        if not seeds:
            raise ValueError("an ensemble needs at least one seed")
        self.spec, self.n_classes, self.seeds = spec, int(n_classes), tuple(seeds)
        m, c, f = len(seeds), spec.channels, spec.n_features()
        self.conv_weight = nn.Parameter(torch.empty(m * c, 3 * KERNEL * KERNEL))
        self.conv_bias = nn.Parameter(torch.empty(m * c))
        self.bn = nn.BatchNorm2d(m * c)
        self.fc_weight = nn.Parameter(torch.empty(m, f, self.n_classes))
        self.fc_bias = nn.Parameter(torch.empty(m, self.n_classes))
        self.dropout = 0.5
        self.reset_parameters()

    @property
    def n_members(self) -> int:
        return len(self.seeds)

    def reset_parameters(self) -> None:
        """torch's default Conv2d / Linear initialisation, member m drawn from its own seed."""
        c, fan_conv, fan_fc = self.spec.channels, 3 * KERNEL * KERNEL, self.spec.n_features()
        with torch.no_grad():
            for i, seed in enumerate(self.seeds):
                g = torch.Generator().manual_seed(int(seed))
                rows = slice(i * c, (i + 1) * c)
                b = 1.0 / math.sqrt(fan_conv)
                self.conv_weight[rows] = torch.rand(c, fan_conv, generator=g) * 2 * b - b
                self.conv_bias[rows] = torch.rand(c, generator=g) * 2 * b - b
                b = 1.0 / math.sqrt(fan_fc)
                self.fc_weight[i] = torch.rand(fan_fc, self.n_classes, generator=g) * 2 * b - b
                self.fc_bias[i] = torch.rand(self.n_classes, generator=g) * 2 * b - b

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 27, H*W): the 3x3 neighbourhoods the convolution multiplies."""
        if x.shape[1:] != (3, self.spec.input_size, self.spec.input_size):
            raise ValueError(
                f"expected inputs (B, 3, {self.spec.input_size}, {self.spec.input_size}), got {tuple(x.shape)}"
            )
        return F.unfold(x, KERNEL, padding=self.spec.padding)

    def forward_patches(self, p: torch.Tensor) -> torch.Tensor:
        s = self.spec
        side = s.input_size + 2 * s.padding - KERNEL + 1
        h = torch.matmul(self.conv_weight, p) + self.conv_bias[:, None]
        h = self.bn(F.relu(h.view(p.shape[0], -1, side, side)))
        pad = 1 if side % s.max_pool else 0
        h = F.max_pool2d(h, s.max_pool, s.max_pool, pad)
        h = F.dropout(h, self.dropout, self.training)
        if s.avg_pool > 1:
            h = F.avg_pool2d(h, s.avg_pool)
        h = h.reshape(p.shape[0], self.n_members, -1)
        return torch.einsum("bmf,mfk->bmk", h, self.fc_weight) + self.fc_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_patches(self.patches(x))
