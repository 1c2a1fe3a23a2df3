"""Flip test-time augmentation: exact for flip-equivariant models, averaging otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge import Segmenter, tta
from phaseedge.backends.base import Backend


class Pointwise(Backend):
    """probs = a fixed pointwise function of the pixel: equivariant to any flip."""

    name = "pointwise"

    def __init__(self, tile: int = 32, n: int = 3) -> None:
        self.tile, self.n_classes, self.max_batch = tile, n, 4
        self.class_names = tuple(f"c{i}" for i in range(n))
        self.calls = 0

    def infer(self, images, ratio):
        self.calls += 1
        x = images.astype(np.float32)
        logits = np.concatenate([x * k for k in range(self.n_classes)], axis=1) * 3.0
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class LeftBiased(Pointwise):
    """Class 1 on the left half of every tile: not flip-equivariant."""

    def infer(self, images, ratio):
        self.calls += 1
        b, _, t, _ = images.shape
        p = np.zeros((b, 2, t, t), np.float32)
        p[:, 1, :, : t // 2] = 1.0
        p[:, 0, :, t // 2 :] = 1.0
        return p


def test_identity_model_gives_identical_output_with_tta():
    frame = np.random.default_rng(0).integers(0, 65535, (97, 75), dtype=np.uint16)
    plain = Segmenter(Pointwise(), overlap=0.25).segment(frame, return_probabilities=True)
    backend = Pointwise()
    flipped = Segmenter(backend, overlap=0.25, tta=True).segment(frame, return_probabilities=True)
    np.testing.assert_array_equal(plain.labels, flipped.labels)
    np.testing.assert_array_equal(plain.probabilities, flipped.probabilities)
    assert backend.calls % len(tta.FLIPS) == 0 and backend.calls >= len(tta.FLIPS)


def test_tta_averages_the_unflipped_passes():
    backend = LeftBiased(tile=8, n=2)
    images = np.zeros((1, 1, 8, 8), np.float16)
    (probs,) = list(tta.infer_flips(backend, [(images, np.zeros((1, 2), np.float32))]))
    np.testing.assert_array_equal(probs, np.full((1, 2, 8, 8), 0.5, np.float32))  # left/right cancel


def test_tta_must_be_a_bool():
    with pytest.raises(TypeError, match="tta"):
        Segmenter(Pointwise(), tta="yes")
