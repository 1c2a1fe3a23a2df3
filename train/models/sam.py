"""LoRA-SAM with the optional Phase Learning Module: encoder -> PLM -> no-prompt mask decoder.

Trainable: LoRA adapters, PLM, prompt-encoder no-mask embedding and the mask decoder (as
SAMed). The encoder's own weights stay frozen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from phaseedge.train.models.common import SegmentationModel
from phaseedge.train.models.decoder import MaskDecoder, NoPromptEncoder, TwoWayTransformer
from phaseedge.train.models.lora import apply_lora, merge_lora
from phaseedge.train.models.plm import PhaseLearningModule
from phaseedge.train.models.sam_encoder import ImageEncoderViT


class LoRASam(SegmentationModel):
    """forward(image [B,1,T,T] in [0,1], ratio [B,n]) -> logits [B,n,T,T]."""

    def __init__(
        self,
        *,
        encoder: dict[str, Any],
        decoder: dict[str, Any],
        n_classes: int,
        tile: int,
        plm: bool,
        lora_rank: int,
        lora_alpha: float,
        config: dict[str, Any],
    ) -> None:
        super().__init__(n_classes=n_classes, tile=tile, config=config)
        self.image_encoder = ImageEncoderViT(img_size=tile, **encoder)
        grid = self.image_encoder.grid
        dim = encoder["out_chans"]
        self.prompt_encoder = NoPromptEncoder(dim, grid)
        self.mask_decoder = MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                decoder["depth"], dim, decoder["num_heads"], decoder["mlp_dim"], decoder["downsample"]
            ),
            n_classes=n_classes,
        )
        self.plm = PhaseLearningModule(dim, n_classes) if plm else None
        for p in self.image_encoder.parameters():
            p.requires_grad_(False)
        if lora_rank > 0:
            apply_lora(self.image_encoder, lora_rank, lora_alpha)

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        self.check_inputs(image, ratio)
        features = self.image_encoder(image)
        if self.plm is not None:
            features = self.plm(features, ratio)
        image_pe, dense = self.prompt_encoder()
        low = self.mask_decoder(features, image_pe, dense)  # [B,n,T/4,T/4]: 4x the embedding grid
        return F.interpolate(low, size=(self.tile, self.tile), mode="bilinear", align_corners=False)

    def merge(self) -> LoRASam:
        """Fold LoRA into the qkv weights and drop the adapters (clean export); returns self."""
        merge_lora(self.image_encoder)
        self.config["merged"] = True
        return self
