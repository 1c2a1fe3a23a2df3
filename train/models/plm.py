"""Phase Learning Module (paper Section 2.2, Fig. 4, Table 6): fuses the phase-ratio vector
into a feature map of the same shape. The reading of the text, module by module, is argued
in docs/design.md ("PLM"):

    P   = FE(F)                           1x1 conv C -> n: one map per phase
    S   = sum_i SA_i([P_i, x, y])         per-phase CoordConv 3x3 (3 -> C), summed over phases
    e   = RE(r)                           2-layer MLP n -> 128 -> C
    R   = S * e                           ratio fusion by element-wise multiplication
    g   = sigmoid(conv3x3([S, R]))        FA gate, 2C -> C
    A   = dwconv3x3(g * S + (1 - g) * R)  FA: two gated branches, added, final (depthwise) conv
    out = gamma * F + delta * A           regulators, both initialised to 0.5 (paper A.4)

At C = 256, n = 3 this is 1.238M parameters against Table 6's 1.2M: FE 0.0008M (Table 6:
0.0335M), RE 0.0335M (same), SA 0.0215M (same), FA 1.182M (Table 6: 1.179M, which is the gate
convolution alone; a dense final 1x1 conv would add 0.066M and leave the 5 % band).
An all-zero ratio ("unknown") is an ordinary input: RE(0) is a learned constant, and the
gamma * F path keeps the encoder's features, so the model also works without a ratio.
"""

from __future__ import annotations

import torch
from torch import nn


def coordinates(h: int, w: int, like: torch.Tensor, span: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """CoordConv's x and y channels, [h, w] each: linspace(-1, 1) across a map of the training
    size ``span`` (default: (h, w)). A larger map (a bigger tile of a fully convolutional model)
    gets the same two half-ramps anchored at its borders and 0, the training tile's centre, in
    between: each pixel sees the coordinates it saw in training at its distance from the border,
    whatever the tile size, and at the training size nothing changes (docs/tiling.md)."""
    sh, sw = span or (h, w)
    return _axis(w, sw, like).view(1, w).expand(h, w), _axis(h, sh, like).view(h, 1).expand(h, w)


def _axis(n: int, span: int, like: torch.Tensor) -> torch.Tensor:
    """linspace(-1, 1, span)'s first ceil(span/2) values at the start, its last floor(span/2) at
    the end, 0 between (index arithmetic, so the training size reproduces linspace exactly)."""
    ramp = torch.cat([torch.linspace(-1.0, 1.0, span, device=like.device, dtype=like.dtype),
                      torch.zeros(1, device=like.device, dtype=like.dtype)])
    i = torch.arange(n, device=like.device)
    j = torch.where(i < (span + 1) // 2, i, torch.where(i >= n - span // 2, i - (n - span), span))
    return ramp[j]


class FeatureAggregator(nn.Module):
    """Fig. 4(c): concatenate -> conv + sigmoid -> two gating branches -> add -> final conv.

    One gate map g weighs the spatial branch and 1 - g the ratio branch ("split into two
    branches"), so the two always share the pixel's budget; ``gate(s, r)`` exposes g for tests.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate_conv = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)

    def gate(self, spatial: torch.Tensor, ratio_feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate_conv(torch.cat([spatial, ratio_feats], dim=1)))

    def forward(self, spatial: torch.Tensor, ratio_feats: torch.Tensor) -> torch.Tensor:
        g = self.gate(spatial, ratio_feats)
        return self.out_conv(g * spatial + (1.0 - g) * ratio_feats)


class PhaseLearningModule(nn.Module):
    """features [B,C,h,w], ratio [B,n] -> features [B,C,h,w]."""

    def __init__(self, channels: int, n_classes: int, hidden: int = 128, span: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.n_classes = n_classes
        self.span = span  # feature-map size at the training tile (CoordConv coordinates); None: any map
        # FE: "a convolutional layer that concentrates the image features into n channels".
        self.fe = nn.Conv2d(channels, n_classes, kernel_size=1)
        # SA: one CoordConv per phase (phase map + x + y -> C); groups=n runs them as one conv.
        self.sa = nn.Conv2d(3 * n_classes, channels * n_classes, kernel_size=3, padding=1, groups=n_classes)
        # RE: the 2-layer MLP n -> 128 -> C of Fig. 4(b).
        self.re = nn.Sequential(nn.Linear(n_classes, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.fa = FeatureAggregator(channels)
        self.gamma = nn.Parameter(torch.tensor(0.5))
        self.delta = nn.Parameter(torch.tensor(0.5))

    def spatial(self, features: torch.Tensor) -> torch.Tensor:
        """FE then SA: the phase-wise, coordinate-aware maps summed over phases, [B,C,h,w]."""
        b, _, h, w = features.shape
        n = self.n_classes
        phases = self.fe(features)  # [B,n,h,w]
        xx, yy = coordinates(h, w, features, self.span)
        # Interleave per phase: [P_0, x, y, P_1, x, y, ...] so group i sees phase i + coordinates.
        coord_input = torch.stack(
            [phases, xx.expand(b, n, h, w), yy.expand(b, n, h, w)], dim=2
        ).reshape(b, 3 * n, h, w)
        return self.sa(coord_input).view(b, n, self.channels, h, w).sum(dim=1)

    def forward(self, features: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        s = self.spatial(features)
        e = self.re(ratio.to(features.dtype))  # [B,C]
        r = s * e[:, :, None, None]
        return self.gamma * features + self.delta * self.fa(s, r)
