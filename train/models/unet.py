"""U-Net baselines with the Phase Learning Module at the bottleneck (default) or before the
1x1 classifier (``plm_at="decoder"``).

At the bottleneck the PLM acts on width * 2**depth channels (256 for width 16, depth 4: the
channel count of SAM's embedding and of the paper's Table 6), and the whole decoder can turn
the ratio into shapes; on the last decoder level it can only rescale ``width`` channels.
docs/results.md measures both.

``unet`` is a plain U-Net, small enough to train on a 2-core CPU at tile 256 (width 16, depth 4,
1.94M parameters); ``attention-unet`` adds additive attention gates on the skip connections
(Oktay et al. 2018). BatchNorm folds into the convolutions at export.

Three options measured for the MetalDAM recipe (docs/results.md, ablation table):
``norm="instance"`` puts InstanceNorm (nnU-Net's default) in every conv block instead of
BatchNorm (the attention gates keep theirs);
``residual`` makes each encoder stage a residual block (nnU-Net's ResEnc U-Net, Isensee et al.
2024); ``deep_supervision`` adds a 1x1 classifier on that many coarser decoder levels, whose
losses train the decoder at every scale (nnU-Net). The extra heads run only in
:meth:`UNet.forward_with_aux` (training); ``forward`` and the exported graph never touch them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from phaseedge.train.models.common import SegmentationModel
from phaseedge.train.models.plm import PhaseLearningModule
from torch import nn

#: where the PLM sits; the first is the default
PLM_PLACEMENTS = ("bottleneck", "decoder")

#: feature normalisation; the first is the default. BatchNorm uses statistics learnt in training,
#: so a tile's output does not depend on the tile's size and the layer folds into the conv at
#: export; InstanceNorm (nnU-Net's choice) normalises each tile by its own statistics.
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d, "instance": partial(nn.InstanceNorm2d, affine=True)}
DEFAULT_NORM = next(iter(NORMS))


def _double_conv(cin: int, cout: int, norm: str = DEFAULT_NORM) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        NORMS[norm](cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False),
        NORMS[norm](cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input (1x1 conv + norm where the width changes), then ReLU."""

    def __init__(self, cin: int, cout: int, norm: str = DEFAULT_NORM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            NORMS[norm](cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False),
            NORMS[norm](cout),
        )
        self.skip = (
            nn.Identity() if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, bias=False), NORMS[norm](cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


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
        residual: bool = False,
        deep_supervision: int = 0,
        norm: str = DEFAULT_NORM,
    ) -> None:
        super().__init__(n_classes=n_classes, tile=tile, config=config)
        if width < 1 or depth < 1:
            raise ValueError(f"U-Net width and depth must be >= 1, got width={width}, depth={depth}")
        if tile % (2**depth):
            raise ValueError(f"tile {tile} must be divisible by 2**depth = {2**depth}")
        if plm_at not in PLM_PLACEMENTS:
            raise ValueError(f"plm_at must be one of {', '.join(PLM_PLACEMENTS)}, got {plm_at!r}")
        if isinstance(deep_supervision, bool) or not isinstance(deep_supervision, int) or not (
            0 <= deep_supervision < depth
        ):
            raise ValueError(f"deep_supervision must be an integer in 0..{depth - 1} (heads on the coarser "
                             f"decoder levels), got {deep_supervision!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.plm_at = plm_at
        chans = [width * 2**i for i in range(depth + 1)]
        block = ResidualBlock if residual else _double_conv
        self.down = nn.ModuleList([block(1, chans[0], norm)])
        self.down.extend(block(chans[i], chans[i + 1], norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=2, stride=2)
            for i in reversed(range(depth))
        )
        self.up_conv = nn.ModuleList(_double_conv(2 * chans[i], chans[i], norm) for i in reversed(range(depth)))
        self.gates = (
            nn.ModuleList(AttentionGate(chans[i]) for i in reversed(range(depth))) if attention else None
        )
        plm_channels = chans[-1] if plm_at == "bottleneck" else width
        span = tile // 2**depth if plm_at == "bottleneck" else tile
        self.plm = PhaseLearningModule(plm_channels, n_classes, span=(span, span)) if plm else None
        # BatchNorm: fully convolutional, any multiple of 2**depth (export/onnx_export.py measures the
        # halo); InstanceNorm sees the whole tile, so it runs at the training tile only, as trained
        self.tile_multiple = 2**depth if norm == DEFAULT_NORM else None
        self.classifier = nn.Conv2d(width, n_classes, kernel_size=1)
        # aux_heads[k] classifies the decoder level 2**(k+1) times coarser than the output
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(chans[k + 1], n_classes, kernel_size=1) for k in range(deep_supervision)
        )

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return self._run(image, ratio, aux=False)[0]

    def forward_with_aux(self, image: torch.Tensor, ratio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus the deep-supervision heads' logits, finest first ([B,n,T/2,T/2], ...)."""
        return self._run(image, ratio, aux=True)

    def _run(self, image: torch.Tensor, ratio: torch.Tensor, aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.check_inputs(image, ratio)
        x = self.down[0](image)
        skips = [x]
        for block in self.down[1:]:
            x = block(self.pool(x))
            skips.append(x)
        skips.pop()
        if self.plm is not None and self.plm_at == "bottleneck":
            x = self.plm(x, ratio)
        aux_logits: list[torch.Tensor] = []
        depth = len(self.up)
        for level, (up, conv) in enumerate(zip(self.up, self.up_conv)):
            x = up(x)
            skip = skips.pop()
            if self.gates is not None:
                skip = self.gates[level](x, skip)
            x = conv(torch.cat([skip, x], dim=1))
            k = depth - 2 - level  # this level is 2**(k+1) times coarser than the output
            if aux and 0 <= k < len(self.aux_heads):
                aux_logits.insert(0, self.aux_heads[k](x))
        if self.plm is not None and self.plm_at == "decoder":
            x = self.plm(x, ratio)
        return self.classifier(x), aux_logits
