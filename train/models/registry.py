"""Model registry with explicit builder constants (as segment-anything's build_sam.py).

``build_model(name, n_classes, plm=True, tile=None, **overrides)`` is the one way to make a
model; ``phaseedge.train.checkpoint.load`` rebuilds from ``config.json`` through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phaseedge.train.models.common import SegmentationModel, make_config
from phaseedge.train.models.ensemble import ENSEMBLE, Ensemble
from phaseedge.train.models.sam import LoRASam
from phaseedge.train.models.unet import DEFAULT_NORM, PLM_PLACEMENTS, UNet

# SAM image encoders as in segment_anything/build_sam.py (patch 16, MLP ratio 4, window 14,
# relative positions, qkv bias, LayerNorm eps 1e-6, neck to 256 channels).
_SAM_COMMON = {"patch_size": 16, "mlp_ratio": 4.0, "out_chans": 256, "window_size": 14}
_SAM_DECODER = {"depth": 2, "num_heads": 8, "mlp_dim": 2048, "downsample": 2}


@dataclass(frozen=True)
class SamSpec:
    encoder: dict[str, Any]
    decoder: dict[str, Any]
    default_tile: int = 512
    default_lora_rank: int = 512  # paper Table 4


@dataclass(frozen=True)
class UNetSpec:
    width: int
    depth: int
    default_tile: int = 256
    attention: bool = False


SAM_SPECS: dict[str, SamSpec] = {
    "sam-vit-b": SamSpec(
        {**_SAM_COMMON, "embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
        _SAM_DECODER,
    ),
    "sam-vit-l": SamSpec(
        {
            **_SAM_COMMON,
            "embed_dim": 1024,
            "depth": 24,
            "num_heads": 16,
            "global_attn_indexes": (5, 11, 17, 23),
        },
        _SAM_DECODER,
    ),
    "sam-vit-h": SamSpec(
        {
            **_SAM_COMMON,
            "embed_dim": 1280,
            "depth": 32,
            "num_heads": 16,
            "global_attn_indexes": (7, 15, 23, 31),
        },
        _SAM_DECODER,
    ),
    # Same classes at toy size, for tests: grid 4 at tile 64 with window 3 exercises padding.
    "sam-tiny": SamSpec(
        {
            "patch_size": 16,
            "mlp_ratio": 4.0,
            "out_chans": 32,
            "window_size": 3,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "global_attn_indexes": (1,),
        },
        {"depth": 2, "num_heads": 2, "mlp_dim": 64, "downsample": 2},
        default_tile=64,
        default_lora_rank=4,
    ),
}

UNET_SPECS: dict[str, UNetSpec] = {
    "unet": UNetSpec(width=16, depth=4),
    "unet-tiny": UNetSpec(width=4, depth=2, default_tile=32),
    "attention-unet": UNetSpec(width=16, depth=4, attention=True),
}

MODEL_NAMES: tuple[str, ...] = (*SAM_SPECS, *UNET_SPECS)


def build_model(
    name: str, n_classes: int, plm: bool = True, tile: int | None = None, **overrides: Any
) -> SegmentationModel:
    """Build a registered model in train mode.

    SAM models accept ``lora_rank`` (0 = no LoRA) and ``lora_alpha`` (default = rank, scale 1);
    U-Nets accept ``width`` and ``depth``; ``"ensemble"`` takes ``members`` (each member's
    ``{"architecture", "arch_kwargs", "merged"}``, as its config.json has them). Weights are
    random; load SAM's with ``load_sam_checkpoint`` and trained ones with
    ``phaseedge.train.checkpoint.load`` (`phaseedge.train.ensemble` makes an ensemble of those).
    """
    if name == ENSEMBLE:
        return _build_ensemble(n_classes, plm, tile, overrides)
    if name not in SAM_SPECS and name not in UNET_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if not isinstance(plm, bool):
        raise TypeError(f"plm must be True or False, got {plm!r}")
    spec = SAM_SPECS.get(name) or UNET_SPECS[name]
    tile = spec.default_tile if tile is None else tile
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if isinstance(spec, SamSpec):
        return _build_sam(name, spec, n_classes, plm, tile, overrides)
    return _build_unet(name, spec, n_classes, plm, tile, overrides)


def _check_overrides(name: str, overrides: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it accepts {', '.join(allowed)}")


def _build_sam(
    name: str, spec: SamSpec, n_classes: int, plm: bool, tile: int, overrides: dict[str, Any]
) -> LoRASam:
    _check_overrides(name, overrides, ("lora_rank", "lora_alpha"))
    patch = spec.encoder["patch_size"]
    if tile % patch:
        raise ValueError(f"{name} tile must be a multiple of {patch}, got {tile}")
    rank = overrides.get("lora_rank", spec.default_lora_rank)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"lora_rank must be an integer >= 0 (0 = no LoRA), got {rank!r}")
    alpha = overrides.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or (rank > 0 and alpha <= 0):
        raise ValueError(f"lora_alpha must be a positive number, got {alpha!r}")
    alpha = float(alpha) if rank > 0 else None
    config = make_config(
        architecture=name,
        arch_kwargs={"lora_rank": rank, "lora_alpha": alpha},
        n_classes=n_classes,
        tile=tile,
        plm=plm,
        lora_rank=rank,
        lora_alpha=alpha,
    )
    return LoRASam(
        encoder=spec.encoder,
        decoder=spec.decoder,
        n_classes=n_classes,
        tile=tile,
        plm=plm,
        lora_rank=rank,
        lora_alpha=alpha or 0.0,
        config=config,
    )


def _build_unet(
    name: str, spec: UNetSpec, n_classes: int, plm: bool, tile: int, overrides: dict[str, Any]
) -> UNet:
    _check_overrides(name, overrides, ("width", "depth", "plm_at", "residual", "deep_supervision", "norm"))
    width = overrides.get("width", spec.width)
    depth = overrides.get("depth", spec.depth)
    plm_at = overrides.get("plm_at", PLM_PLACEMENTS[0])
    residual = overrides.get("residual", False)
    deep_supervision = overrides.get("deep_supervision", 0)
    norm = overrides.get("norm", DEFAULT_NORM)
    for key, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, got {value!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be true or false, got {residual!r}")
    # Only non-default options enter the config, so checkpoints saved before they existed
    # and the ones saved without them have the same arch_kwargs.
    extra = {k: v for k, v in (("residual", residual), ("deep_supervision", deep_supervision)) if v}
    if norm != DEFAULT_NORM:
        extra["norm"] = norm
    config = make_config(
        architecture=name,
        arch_kwargs={"width": width, "depth": depth, "plm_at": plm_at, **extra},
        n_classes=n_classes,
        tile=tile,
        plm=plm,
    )
    return UNet(
        width=width,
        depth=depth,
        n_classes=n_classes,
        tile=tile,
        plm=plm,
        plm_at=plm_at,
        config=config,
        attention=spec.attention,
        residual=residual,
        deep_supervision=deep_supervision,
        norm=norm,
    )


def _build_ensemble(n_classes: int, plm: bool, tile: int | None, overrides: dict[str, Any]) -> Ensemble:
    _check_overrides(ENSEMBLE, overrides, ("members",))
    specs = overrides.get("members")
    if not isinstance(specs, list) or len(specs) < 2:
        raise ValueError(f"an ensemble needs a list of at least 2 members, got {specs!r}")
    members = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {"architecture", "arch_kwargs", "merged"}:
            raise ValueError(f"ensemble member {i} must be {{architecture, arch_kwargs, merged}}, got {spec!r}")
        if spec["architecture"] == ENSEMBLE:
            raise ValueError(f"ensemble member {i} is itself an ensemble: list its members instead")
        member = build_model(spec["architecture"], n_classes, plm=plm, tile=tile, **spec["arch_kwargs"])
        if spec["merged"] and isinstance(member, LoRASam):
            member.merge()  # fresh adapters are zero: merging only removes them, matching the saved keys
        members.append(member)
    config = make_config(architecture=ENSEMBLE, arch_kwargs={"members": [dict(s) for s in specs]},
                         n_classes=n_classes, tile=members[0].tile, plm=plm)
    config["merged"] = True  # members are stored as they are (LoRA folded where it was)
    return Ensemble(members, config)
