"""Load an official SAM checkpoint (``sam_vit_b_01ec64.pth`` ...) into a LoRASam.

Conversions, all intended and reported:
- ``patch_embed.proj``: SAM's RGB normalisation ((255*g - mean_c) / std_c for three identical
  channels) folded into a one-channel conv, so the model takes the [0,1] grey tile directly;
- ``pos_embed`` and the global blocks' ``rel_pos_*`` resized to the tile's token grid (as SAMed);
- ``mask_decoder.mask_tokens``: the first n of SAM's 4 tokens (and their hypernetwork MLPs).
Keys the no-prompt path never uses (IoU head, point/box/mask prompt embeddings) are ignored.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from phaseedge.train.models.sam import LoRASam

log = logging.getLogger(__name__)

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Parts of the official model that the no-prompt, multi-class path does not contain.
_UNUSED = (
    "mask_decoder.iou_prediction_head.",
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",
)
# Parameters that a SAM checkpoint cannot hold: they are ours and start from their init.
_NEW = (".lora.", "plm.")


@dataclass
class LoadReport:
    """What load_sam_checkpoint did: keys left at their init, ignored, converted."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)


def fold_rgb_patch_embed(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[D,3,p,p] conv on SAM-normalised RGB -> [D,1,p,p] conv on grey g in [0,1].

    conv(x_c = (255 g - m_c)/s_c) = sum_c W_c*(255/s_c) g + b - sum_c (m_c/s_c) sum(W_c), exact
    because the patch conv has no padding.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB patch-embedding weight [D,3,p,p], got {list(weight.shape)}")
    w = weight.double()
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float64)
    std = torch.tensor(PIXEL_STD, dtype=torch.float64)
    grey_w = (w * (255.0 / std)[None, :, None, None]).sum(dim=1, keepdim=True)
    grey_b = bias.double() - (w.sum(dim=(2, 3)) * (mean / std)[None, :]).sum(dim=1)
    return grey_w.to(weight.dtype), grey_b.to(bias.dtype)


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1,G,G,D] -> [1,grid,grid,D], bilinear (SAMed's resize for tiles other than 1024)."""
    x = F.interpolate(
        pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bilinear", align_corners=False
    )
    return x.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(rel: torch.Tensor, length: int) -> torch.Tensor:
    """[L,d] -> [length,d], linear along L (SAM's own get_rel_pos interpolation)."""
    x = F.interpolate(rel.float().t()[None], size=length, mode="linear")
    return x[0].t().to(rel.dtype)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; an unsafe or foreign pickle becomes a clear ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} is not a plain tensor state dict: torch.load(weights_only=True) refused it "
            f"(it may run code when unpickled; only load checkpoints you trust, e.g. the official "
            f"sam_vit_*.pth). Details: {exc}"
        ) from exc
    except RuntimeError as exc:
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def convert_sam_state_dict(
    state: Mapping[str, torch.Tensor], model: LoRASam
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Official SAM keys/shapes -> this model's; shape mismatches that no conversion explains raise."""
    target = model.state_dict()
    report = LoadReport()
    state = dict(state)
    wkey, bkey = "image_encoder.patch_embed.proj.weight", "image_encoder.patch_embed.proj.bias"
    if wkey in state and bkey in state and state[wkey].dim() == 4 and state[wkey].shape[1] == 3:
        state[wkey], state[bkey] = fold_rgb_patch_embed(state[wkey], state[bkey])
        report.converted += [wkey, bkey]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_UNUSED) or _is_extra_hypernetwork(key, model.n_classes):
            report.ignored.append(key)
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        if value.shape != target[key].shape:
            value = _convert(key, value, target[key], report)
        out[key] = value
    bad = [
        f"{k}: checkpoint {list(v.shape)}, model {list(target[k].shape)}"
        for k, v in out.items()
        if v.shape != target[k].shape
    ]
    if bad:
        raise ValueError(
            "SAM checkpoint does not fit this model (wrong architecture, e.g. ViT-L weights into "
            "sam-vit-b?):\n  " + "\n  ".join(bad)
        )
    report.missing = [k for k in target if k not in out and not any(s in "." + k for s in _NEW)]
    return out, report


def _is_extra_hypernetwork(key: str, n_classes: int) -> bool:
    """SAM has 4 mask tokens; the MLPs of tokens >= n_classes have no counterpart here."""
    prefix = "mask_decoder.output_hypernetworks_mlps."
    return key.startswith(prefix) and int(key[len(prefix) :].split(".")[0]) >= n_classes


def _convert(key: str, value: torch.Tensor, current: torch.Tensor, report: LoadReport) -> torch.Tensor:
    """One intended shape conversion, or the value unchanged (then reported as a mismatch)."""
    want = current.shape
    if key.endswith(".pos_embed") and value.dim() == 4 and value.shape[3] == want[3]:
        report.converted.append(key)
        return resize_pos_embed(value, want[1])
    if key.endswith((".rel_pos_h", ".rel_pos_w")) and value.dim() == 2 and value.shape[1] == want[1]:
        report.converted.append(key)
        return resize_rel_pos(value, want[0])
    if key == "mask_decoder.mask_tokens.weight" and value.dim() == 2 and value.shape[1] == want[1]:
        # First n of SAM's tokens; tokens beyond SAM's 4 keep their init.
        report.converted.append(key)
        tokens = current.clone()
        k = min(value.shape[0], want[0])
        tokens[:k] = value[:k]
        return tokens
    return value


def load_sam_checkpoint(model: LoRASam, path: str | Path) -> LoadReport:
    """Load official SAM weights into ``model`` in place; returns (and logs) what was not loaded."""
    if not isinstance(model, LoRASam):
        raise TypeError(f"load_sam_checkpoint needs a SAM model, got {type(model).__name__}")
    state = read_state_dict(path)
    if not any(k.startswith(_PREFIXES) for k in state):
        raise ValueError(f"{path} has no SAM keys (image_encoder.*, mask_decoder.*, prompt_encoder.*)")
    converted, report = convert_sam_state_dict(state, model)
    with torch.no_grad():
        model.load_state_dict(converted, strict=False)
    if report.missing or report.unexpected:
        log.warning(
            "SAM checkpoint %s: %d model keys left at init (%s), %d checkpoint keys unexpected (%s)",
            path,
            len(report.missing),
            ", ".join(report.missing[:5]),
            len(report.unexpected),
            ", ".join(report.unexpected[:5]),
        )
    return report
