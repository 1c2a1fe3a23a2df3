"""phaseedge.io.read_image: formats, memory map, information band, SEM metadata, errors."""

from __future__ import annotations

import csv
import hashlib
import mmap

import cv2
import numpy as np
import pytest
import tifffile

from phaseedge import io, synth


def _is_memory_mapped(a) -> bool:
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype, suffix", [(np.uint8, ".png"), (np.uint16, ".tif"), (np.uint8, ".jpg")])
def test_band_detected_on_synth_frames(tmp_path, seed, dtype, suffix):
    img, mask = synth.micrograph((300, 256), seed=seed, dtype=dtype, band=44)
    path = tmp_path / f"f{suffix}"
    (tifffile.imwrite(path, img) if suffix == ".tif" else cv2.imwrite(str(path), img))
    frame = io.read_image(path)
    assert frame.band_rows == 44 and frame.pixels.shape == mask.shape
    if suffix != ".jpg":
        np.testing.assert_array_equal(frame.pixels, img[: mask.shape[0]])
    assert frame.bits == 8 * np.dtype(dtype).itemsize


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_phases", [3, 5])
def test_no_band_on_ordinary_micrographs(tmp_path, seed, n_phases):
    img, _ = synth.micrograph((256, 320), n_phases=n_phases, seed=seed, dtype=np.uint8)
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), img)
    frame = io.read_image(path)
    assert frame.band_rows == 0
    np.testing.assert_array_equal(frame.pixels, img)


def test_no_band_on_saturated_or_dark_frames(tmp_path):
    # an underexposed frame: most pixels at the extremes everywhere is not a data bar
    img = np.zeros((200, 200), np.uint8)
    img[::7] = 255
    path = tmp_path / "dark.png"
    cv2.imwrite(str(path), img)
    assert io.read_image(path).band_rows == 0


def test_explicit_crop_and_no_detection(tmp_path):
    img, _ = synth.micrograph((300, 256), seed=3, band=44)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, img)
    frame = io.read_image(path, crop=(100, 120))
    assert frame.pixels.shape == (100, 120) and frame.band_rows == 200
    np.testing.assert_array_equal(frame.pixels, img[:100, :120])
    assert io.read_image(path, detect_band=False).pixels.shape == (300, 256)
    for bad in [(400, 10), (10,), (0, 5), ("a", 3), (2.5, 3)]:
        with pytest.raises(ValueError, match="crop"):
            io.read_image(path, crop=bad)


def test_tiff_is_memory_mapped_read_only_and_untouched(tmp_path):
    img, _ = synth.micrograph((128, 96), seed=4)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, img)
    before = _digest(path)
    frame = io.read_image(path)
    assert _is_memory_mapped(frame.pixels)
    assert not frame.pixels.flags.writeable
    with pytest.raises(ValueError):
        frame.pixels[0, 0] = 1
    np.testing.assert_array_equal(frame.pixels, img)
    assert _digest(path) == before


@pytest.mark.parametrize("kwargs", [{"bigtiff": True}, {"compression": "zlib"}, {"tile": (32, 32)}])
def test_tiff_variants(tmp_path, kwargs):
    img, _ = synth.micrograph((128, 96), seed=5, dtype=np.uint16)
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, img, **kwargs)
    frame = io.read_image(path)
    np.testing.assert_array_equal(frame.pixels, img)
    assert not frame.pixels.flags.writeable and frame.bits == 16
    assert _is_memory_mapped(frame.pixels) == ("compression" not in kwargs and "tile" not in kwargs)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_tiff_rgb_and_stacks(tmp_path, planar):
    grey, _ = synth.micrograph((64, 48), seed=9, dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    rgb = np.dstack([grey] * 3)
    tifffile.imwrite(
        path, rgb if planar == "contig" else np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig=planar
    )
    np.testing.assert_array_equal(io.read_image(path).pixels, grey)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([grey, grey[::-1]]))
    np.testing.assert_array_equal(io.read_image(stack).pixels, grey)


def test_fei_metadata_pixel_size_and_data_bar(tmp_path):
    img, _ = synth.micrograph((120, 100), seed=6, dtype=np.uint16)
    fei = "[User]\r\nUser=x\r\n[Scan]\r\nPixelWidth=2.5e-09\r\nPixelHeight=2.5e-09\r\n[Image]\r\nResolutionX=100\r\nResolutionY=90\r\n"
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, img, extratags=[(34682, "s", 0, fei, True)])
    frame = io.read_image(path)
    assert frame.pixel_size_m == pytest.approx(2.5e-9)
    assert frame.pixels.shape == (90, 100) and frame.band_rows == 30


def test_zeiss_metadata_pixel_size(tmp_path):
    img, _ = synth.micrograph((64, 64), seed=7, dtype=np.uint8)
    zeiss = "0\r\n1\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 3.5 nm\r\nAP_MAG\r\nMag = 10.00 K X\r\n"
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, img, extratags=[(34118, "s", 0, zeiss, True)])
    assert io.read_image(path).pixel_size_m == pytest.approx(3.5e-9)


def test_no_metadata_pixel_size_is_none(tmp_path):
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), np.full((16, 16), 9, np.uint8))
    assert io.read_image(path).pixel_size_m is None


def test_colour_files(tmp_path):
    grey, _ = synth.micrograph((64, 80), seed=8, dtype=np.uint8)
    same = tmp_path / "same.png"
    cv2.imwrite(str(same), np.dstack([grey] * 3))
    np.testing.assert_array_equal(io.read_image(same).pixels, grey)
    colour = np.dstack([grey] * 3)
    colour[10, 10, 2] ^= 0x40
    diff = tmp_path / "diff.png"
    cv2.imwrite(str(diff), colour)
    with pytest.raises(ValueError, match="diff.png.*different channels"):
        io.read_image(diff)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        io.read_image(tmp_path / "nope.tif")
    for name in ("junk.png", "junk.tif", "empty.jpg"):
        path = tmp_path / name
        path.write_bytes(b"" if name.startswith("empty") else b"not an image at all" * 10)
        with pytest.raises(ValueError, match=name):
            io.read_image(path)


def test_metaldam_band_removed(metaldam_dir):
    with open(metaldam_dir / "metadata.csv", newline="") as f:
        rows = {r["image"]: int(r["mask_height"]) for r in csv.DictReader(f)}
    for path in sorted((metaldam_dir / "images").iterdir()):
        frame = io.read_image(path)
        height = frame.pixels.shape[0] + frame.band_rows
        expected_start = {768: 718, 960: 896}[height]
        assert abs(frame.pixels.shape[0] - expected_start) <= 3, path.name
        assert frame.pixels.shape[0] >= rows[path.stem], path.name
        assert frame.pixels.ndim == 2 and frame.pixels.dtype == np.uint8
