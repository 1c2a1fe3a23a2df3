"""U-Net baselines with the Phase Learning Module at the bottleneck (default) or before the
1x1 classifier (``plm_at="decoder"``).

At the bottleneck the PLM acts on width * 2**depth channels (256 for width 16, depth 4: the
channel count of SAM's embedding and of the paper's Table 6), and the whole decoder can turn
the ratio into shapes; on the last decoder level it can only rescale ``width`` channels.
docs/results.md measures both.

``unet`` is a plain U-Net, small enough to train on a 2-core CPU at tile 256 (width 16, depth 4,
1.94M parameters); ``attention-unet`` adds additive attention gates on the skip connections
(Oktay et al. 2018). BatchNorm folds into the convolutions at export.
"""

from __future__ import annotations

from typing import Any

import torch
from phaseedge.train.models.common import SegmentationModel
from phaseedge.train.models.plm import PhaseLearningModule
from torch import nn

#: where the PLM sits; the first is the default
PLM_PLACEMENTS = ("bottleneck", "decoder")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """skip * sigmoid(psi(relu(W_g g + W_x skip))): lets the decoder suppress irrelevant skip features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.w_g = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.w_x = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.psi = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid()
        )

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.w_g(gate) + self.w_x(skip))


class UNet(SegmentationModel):
    """forward(image [B,1,T,T] in [0,1], ratio [B,n]) -> logits [B,n,T,T]; T divisible by 2**depth."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        n_classes: int,
        tile: int,
        plm: bool,
        config: dict[str, Any],
        plm_at: str = PLM_PLACEMENTS[0],
        attention: bool = False,
    ) -> None:
        super().__init__(n_classes=n_classes, tile=tile, config=config)
        if width < 1 or depth < 1:
            raise ValueError(f"U-Net width and depth must be >= 1, got width={width}, depth={depth}")
        if tile % (2**depth):
            raise ValueError(f"tile {tile} must be divisible by 2**depth = {2**depth}")
        if plm_at not in PLM_PLACEMENTS:
            raise ValueError(f"plm_at must be one of {', '.join(PLM_PLACEMENTS)}, got {plm_at!r}")
        self.plm_at = plm_at
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(1, chans[0])])
        self.down.extend(_double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=2, stride=2)
            for i in reversed(range(depth))
        )
        self.up_conv = nn.ModuleList(_double_conv(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.gates = (
            nn.ModuleList(AttentionGate(chans[i]) for i in reversed(range(depth))) if attention else None
        )
        plm_channels = chans[-1] if plm_at == "bottleneck" else width
        span = tile // 2**depth if plm_at == "bottleneck" else tile
        self.plm = PhaseLearningModule(plm_channels, n_classes, span=(span, span)) if plm else None
        self.tile_multiple = 2**depth  # fully convolutional: any multiple of 2**depth (export/onnx_export.py)
        self.classifier = nn.Conv2d(width, n_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        self.check_inputs(image, ratio)
        x = self.down[0](image)
        skips = [x]
        for block in self.down[1:]:
            x = block(self.pool(x))
            skips.append(x)
        skips.pop()
        if self.plm is not None and self.plm_at == "bottleneck":
            x = self.plm(x, ratio)
        for level, (up, conv) in enumerate(zip(self.up, self.up_conv)):
            x = up(x)
            skip = skips.pop()
            if self.gates is not None:
                skip = self.gates[level](x, skip)
            x = conv(torch.cat([skip, x], dim=1))
        if self.plm is not None and self.plm_at == "decoder":
            x = self.plm(x, ratio)
        return self.classifier(x)
