"""Several trained models as one: the mean of their class probabilities (nnU-Net's fold ensemble).

The forward returns ``log(mean_m softmax(logits_m))``, so the runtime's softmax gives exactly the
averaged probabilities and every backend, exporter and parity check runs an ensemble unchanged
(one graph, one sidecar). Members share classes, tile, PLM flag and input contract.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

import torch
from phaseedge.train.models.common import SegmentationModel
from torch import nn

#: the ``architecture`` of an ensemble's config; its ``arch_kwargs["members"]`` lists each
#: member's ``{"architecture", "arch_kwargs", "merged"}``
ENSEMBLE = "ensemble"


class Ensemble(SegmentationModel):
    """Mean of the members' softmax, returned as log-probabilities (valid logits)."""

    def __init__(self, members: list[SegmentationModel], config: dict[str, Any]) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            for attr in ("n_classes", "tile", "plm_enabled"):
                if getattr(m, attr) != getattr(first, attr):
                    raise ValueError(f"ensemble member {i} has {attr} {getattr(m, attr)!r}, "
                                     f"member 0 has {getattr(first, attr)!r}: members must agree")
        super().__init__(n_classes=first.n_classes, tile=first.tile, config=config)
        self.members = nn.ModuleList(members)
        multiples = [m.tile_multiple for m in members]
        # any tile every member takes: the least common multiple, or the fixed tile if one is fixed
        self.tile_multiple = None if None in multiples else reduce(math.lcm, multiples)

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        self.check_inputs(image, ratio)
        logp = torch.stack([torch.log_softmax(m(image, ratio).float(), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))
