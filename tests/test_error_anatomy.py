"""scripts/error_anatomy.py's boundary band: the pixels within BAND of a change of label, no others."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the script scores checkpoints
pytest.importorskip("cv2")
_spec = importlib.util.spec_from_file_location(
    "error_anatomy", Path(__file__).resolve().parents[1] / "scripts" / "error_anatomy.py")
_anatomy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_anatomy)


def test_the_band_is_band_pixels_either_side_of_a_vertical_boundary():
    mask = np.zeros((8, 20), np.uint8)
    mask[:, 10:] = 2
    for band in (1, 2, 3):
        edge = _anatomy.boundary_band(mask, 5, band)
        cols = np.flatnonzero(edge.all(axis=0))
        assert cols.tolist() == list(range(10 - band, 10 + band))
        assert not edge[:, : 10 - band].any() and not edge[:, 10 + band:].any()


def test_a_uniform_frame_has_no_band_and_a_bad_band_is_refused():
    assert not _anatomy.boundary_band(np.ones((6, 6), np.uint8), 3, 2).any()
    with pytest.raises(ValueError, match="band"):
        _anatomy.boundary_band(np.ones((6, 6), np.uint8), 3, 0)
