"""Phase Learning Module (paper Section 2.2, Fig. 4, Table 6): fuses the phase-ratio vector
into a feature map of the same shape. The reading chosen here is drawn and argued in
docs/design.md.

    P = FE(F)                          1x1 conv C -> n: one map per phase
    S = sum_i SA_i([P_i, x, y])        per-phase CoordConv 3x3 (3 -> C), grouped conv
    e = RE(r)                          MLP n -> hidden -> C
    R = S * sigmoid(e)                 ratio-gated spatial features
    out = gamma * F + delta * FA([F, R])   FA: 3x3 conv 2C -> C; gamma, delta init 0.5

An all-zero ratio ("unknown") is an ordinary input: RE(0) is a learned constant gate, and the
gamma * F path keeps the encoder features.
"""

from __future__ import annotations

import torch
from torch import nn


class PhaseLearningModule(nn.Module):
    """features [B,C,h,w], ratio [B,n] -> features [B,C,h,w]."""

    def __init__(self, channels: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.channels = channels
        self.n_classes = n_classes
        # FE: "a convolutional layer that concentrates the image features into n channels".
        self.fe = nn.Conv2d(channels, n_classes, kernel_size=1)
        # SA: one CoordConv per phase (phase map + x + y -> C); groups=n runs them as one conv.
        self.sa = nn.Conv2d(3 * n_classes, channels * n_classes, kernel_size=3, padding=1, groups=n_classes)
        # RE: the 2-layer MLP n -> 128 -> C of Fig. 4(b).
        self.re = nn.Sequential(nn.Linear(n_classes, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        # FA: 3x3 conv over [original, ratio-enhanced] (2C -> C), 1.18M parameters at C=256.
        self.fa = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)
        self.gamma = nn.Parameter(torch.tensor(0.5))
        self.delta = nn.Parameter(torch.tensor(0.5))

    def forward(self, features: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        n = self.n_classes
        phases = self.fe(features)  # [B,n,h,w]
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=features.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=features.dtype)
        yy = ys.view(1, 1, h, 1).expand(b, n, h, w)
        xx = xs.view(1, 1, 1, w).expand(b, n, h, w)
        # Interleave per phase: [P_0, x, y, P_1, x, y, ...] so group i sees phase i + coordinates.
        coord_input = torch.stack([phases, xx, yy], dim=2).reshape(b, 3 * n, h, w)
        spatial = self.sa(coord_input).view(b, n, c, h, w).sum(dim=1)  # [B,C,h,w]
        gate = torch.sigmoid(self.re(ratio.to(features.dtype)))  # [B,C]
        enhanced = spatial * gate[:, :, None, None]
        fused = self.fa(torch.cat([features, enhanced], dim=1))
        return self.gamma * features + self.delta * fused
