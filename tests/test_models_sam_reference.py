"""Our export-friendly SAM equals segment-anything's reference classes on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from phaseedge.train.models import SAM_SPECS, build_model, load_sam_checkpoint
from phaseedge.train.models.sam_checkpoint import (
    PIXEL_MEAN,
    PIXEL_STD,
    convert_sam_state_dict,
    fold_rgb_patch_embed,
)

from tests.sam_reference import official_state_dict, randomize_, reference_sam

torch.set_num_threads(2)


def _reference_logits(encoder, prompt, decoder, grey: torch.Tensor, tile: int) -> torch.Tensor:
    """SAM's own path for a grey tile: replicate to RGB at 0-255, normalise, no prompts."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    rgb = (255.0 * grey.expand(-1, 3, -1, -1) - mean) / std
    out = []
    for i in range(rgb.shape[0]):  # the reference decoder takes one image at a time
        emb = encoder(rgb[i : i + 1])
        sparse, dense = prompt(points=None, boxes=None, masks=None)
        low, _ = decoder.predict_masks(emb, prompt.get_dense_pe(), sparse, dense)
        out.append(F.interpolate(low, size=(tile, tile), mode="bilinear", align_corners=False))
    return torch.cat(out)


@pytest.mark.parametrize("tile", [64, 96])
def test_tiny_sam_equals_reference(tmp_path, tile):
    ref = reference_sam(SAM_SPECS["sam-tiny"], tile, n_classes=3)
    randomize_(*ref)
    path = tmp_path / "sam_tiny.pth"
    torch.save(official_state_dict(*ref), path)

    model = build_model("sam-tiny", 3, plm=False, tile=tile).eval()
    report = load_sam_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in report.ignored
    assert "image_encoder.pos_embed" not in report.converted  # same tile: nothing resized

    grey = torch.rand(2, 1, tile, tile, generator=torch.Generator().manual_seed(5))
    ratio = torch.zeros(2, 3)
    with torch.no_grad():
        expected = _reference_logits(*ref, grey, tile)
        got = model(grey, ratio)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_grey_folding_is_exact():
    """conv(folded, g) == conv(SAM weights, (255*[g,g,g] - mean) / std)."""
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, generator=g)
    grey = torch.rand(2, 1, 64, 64, generator=g, dtype=torch.float64)
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float64).view(1, 3, 1, 1)
    rgb = (255.0 * grey.expand(-1, 3, -1, -1) - mean) / std
    expected = F.conv2d(rgb, weight.double(), bias.double(), stride=16)
    w1, b1 = fold_rgb_patch_embed(weight.double(), bias.double())
    assert w1.shape == (8, 1, 16, 16)
    torch.testing.assert_close(F.conv2d(grey, w1, b1, stride=16), expected, rtol=1e-12, atol=1e-10)


def test_checkpoint_resized_to_a_smaller_tile(tmp_path):
    """A 128-native checkpoint into a 64 tile: pos_embed and global rel_pos resized, as SAMed."""
    ref = reference_sam(SAM_SPECS["sam-tiny"], 128, n_classes=4)
    randomize_(*ref)
    path = tmp_path / "sam_tiny_128.pth"
    torch.save(official_state_dict(*ref), path)
    model = build_model("sam-tiny", 3, tile=64)
    report = load_sam_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert {
        "image_encoder.pos_embed",
        "image_encoder.blocks.1.attn.rel_pos_h",
        "image_encoder.blocks.1.attn.rel_pos_w",
        "mask_decoder.mask_tokens.weight",
    } <= set(report.converted)
    assert "image_encoder.blocks.0.attn.rel_pos_h" not in report.converted  # windowed: same size
    assert "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight" in report.ignored
    assert model.image_encoder.pos_embed.shape == (1, 4, 4, 32)
    torch.testing.assert_close(model.mask_decoder.mask_tokens.weight, ref[2].mask_tokens.weight[:3])
    # LoRA and PLM are new; a freshly loaded LoRA model still equals its base weights.
    assert any(".lora." in k for k in model.state_dict())


def test_vit_b_shapes_match_the_official_layout():
    """Every official ViT-B key has our name, with the same shape except the grey patch conv."""
    with torch.device("meta"):
        ref = reference_sam(SAM_SPECS["sam-vit-b"], 1024, n_classes=4)
        model = build_model("sam-vit-b", 4, plm=False, tile=1024, lora_rank=0)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in official_state_dict(*ref).items()}
    ignored = ("mask_decoder.iou_prediction_head.", "prompt_encoder.point_embeddings.",
               "prompt_encoder.not_a_point_embed.", "prompt_encoder.mask_downscaling.")  # fmt: skip
    used = {k: s for k, s in theirs.items() if not k.startswith(ignored)}
    assert set(used) == set(ours)
    diff = {k for k in used if used[k] != ours[k]}
    assert diff == {"image_encoder.patch_embed.proj.weight"}
    assert ours["image_encoder.patch_embed.proj.weight"] == (768, 1, 16, 16)


def test_official_vit_b_shapes_convert_to_tile_512():
    """sam_vit_b_01ec64.pth's shapes (zeros here) fit sam-vit-b at tile 512 after the SAMed resizes."""
    with torch.device("meta"):
        ref = reference_sam(SAM_SPECS["sam-vit-b"], 1024, n_classes=4)
        model = build_model("sam-vit-b", 3, tile=512)
    state = {k: torch.zeros(v.shape) for k, v in official_state_dict(*ref).items()}
    converted, report = convert_sam_state_dict(state, model)
    assert report.missing == [] and report.unexpected == []
    resized = {f"image_encoder.blocks.{i}.attn.rel_pos_{a}" for i in (2, 5, 8, 11) for a in "hw"}
    assert resized | {"image_encoder.pos_embed", "mask_decoder.mask_tokens.weight"} <= set(report.converted)
    assert converted["image_encoder.pos_embed"].shape == (1, 32, 32, 768)
    assert converted["image_encoder.blocks.2.attn.rel_pos_h"].shape == (63, 64)
    assert converted["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)
