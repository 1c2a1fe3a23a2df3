"""load_sam_checkpoint: weights_only loading, clear errors for unsafe pickles and wrong shapes."""

from __future__ import annotations

import pickle

import pytest
import torch
from phaseedge.train.models import SAM_SPECS, build_model, load_sam_checkpoint

from tests.sam_reference import official_state_dict, reference_sam

torch.set_num_threads(2)


class _Payload:
    """Unpickling this calls print: what weights_only=True must refuse."""

    def __reduce__(self):
        return (print, ("pwned: code ran while loading a checkpoint",))


def test_unsafe_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"image_encoder.pos_embed": _Payload()}, f, protocol=2)
    model = build_model("sam-tiny", 3)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sam_checkpoint(model, path)
    assert "pwned" not in capsys.readouterr().out


def test_unsafe_torch_save_is_refused(tmp_path, capsys):
    path = tmp_path / "evil_zip.pth"
    torch.save({"image_encoder.pos_embed": _Payload()}, path)
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        load_sam_checkpoint(build_model("sam-tiny", 3), path)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_architecture_names_the_mismatched_keys(tmp_path):
    spec = SAM_SPECS["sam-tiny"]
    bigger = type(spec)({**spec.encoder, "embed_dim": 64}, spec.decoder)
    path = tmp_path / "other.pth"
    torch.save(official_state_dict(*reference_sam(bigger, 64, n_classes=4)), path)
    with pytest.raises(ValueError, match=r"does not fit this model(.|\n)*blocks\.0\.attn\.qkv\.weight"):
        load_sam_checkpoint(build_model("sam-tiny", 3), path)


def test_unexpected_and_missing_keys_are_reported(tmp_path):
    state = official_state_dict(*reference_sam(SAM_SPECS["sam-tiny"], 64, n_classes=4))
    del state["mask_decoder.transformer.norm_final_attn.weight"]
    state["image_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    report = load_sam_checkpoint(build_model("sam-tiny", 3), path)
    assert report.missing == ["mask_decoder.transformer.norm_final_attn.weight"]
    assert report.unexpected == ["image_encoder.extra.weight"]


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no SAM keys"):
        load_sam_checkpoint(build_model("sam-tiny", 3), path)
    with pytest.raises(FileNotFoundError):
        load_sam_checkpoint(build_model("sam-tiny", 3), tmp_path / "absent.pth")
    with pytest.raises(TypeError, match="SAM model"):
        load_sam_checkpoint(build_model("unet-tiny", 3), path)
