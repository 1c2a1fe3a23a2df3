"""The GPU probe (phaseedge.gpu, through export/trt.py's device_info): cuInit first, the device the
build targets, no driver or GPU -> None.

Runs without TensorRT and without a GPU: the driver library is replaced by a fake.
"""

from __future__ import annotations

import ctypes

import pytest
from phaseedge.export import trt

from phaseedge import gpu
from phaseedge.gpu import has_cuda_gpu


class FakeDriver:
    """The four libcuda calls the probe makes; writes through ctypes.byref like the real one."""

    def __init__(self, gpus: list[tuple[str, tuple[int, int]]], init_rc: int = 0) -> None:
        self.gpus, self.init_rc = gpus, init_rc
        self.calls: list[tuple] = []
        self.initialised = False

    def _need_init(self) -> int:
        return 0 if self.initialised else 3  # CUDA_ERROR_NOT_INITIALIZED, as the real driver

    def cuInit(self, flags: int) -> int:
        self.calls.append(("cuInit", flags))
        self.initialised = self.init_rc == 0
        return self.init_rc

    def cuDeviceGetCount(self, ref) -> int:
        self.calls.append(("cuDeviceGetCount",))
        if rc := self._need_init():
            return rc
        ref._obj.value = len(self.gpus)
        return 0

    def cuDeviceGet(self, ref, ordinal: int) -> int:
        self.calls.append(("cuDeviceGet", ordinal))
        if rc := self._need_init():
            return rc
        if not 0 <= ordinal < len(self.gpus):
            return 101  # CUDA_ERROR_INVALID_DEVICE
        ref._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size: int, dev: ctypes.c_int) -> int:
        self.calls.append(("cuDeviceGetName", dev.value))
        buf.value = self.gpus[dev.value][0].encode()
        return 0

    def cuDeviceGetAttribute(self, ref, attr: int, dev: ctypes.c_int) -> int:
        self.calls.append(("cuDeviceGetAttribute", attr, dev.value))
        major, minor = self.gpus[dev.value][1]
        ref._obj.value = {gpu.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: major,
                          gpu.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: minor}[attr]
        return 0


MIXED = [("NVIDIA GeForce RTX 4090", (8, 9)), ("NVIDIA H200", (9, 0)), ("NVIDIA RTX PRO 6000", (12, 0))]


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the machine without a GPU")
def test_probe_without_gpu_returns_none():
    assert trt.device_info() is None
    assert trt.device_info(3) is None


def test_probe_without_driver_library(monkeypatch):
    monkeypatch.setattr(gpu, "_load_driver", lambda: None)
    assert trt.device_info(0) is None


def test_probe_when_cuinit_fails(monkeypatch):
    fake = FakeDriver(MIXED, init_rc=100)  # CUDA_ERROR_NO_DEVICE
    monkeypatch.setattr(gpu, "_load_driver", lambda: fake)
    assert trt.device_info(1) is None
    assert [c[0] for c in fake.calls] == ["cuInit"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_probe_inits_first_and_reads_the_requested_device(monkeypatch, index):
    fake = FakeDriver(MIXED)
    monkeypatch.setattr(gpu, "_load_driver", lambda: fake)
    name, (major, minor) = MIXED[index]
    assert trt.device_info(index) == (name, f"{major}.{minor}")
    assert fake.calls[0] == ("cuInit", 0)
    assert ("cuDeviceGet", index) in fake.calls
    assert all(c[0] != "cuDeviceGet" or c[1] == index for c in fake.calls)
    assert fake.calls.index(("cuInit", 0)) < fake.calls.index(("cuDeviceGet", index))


def test_probe_refuses_a_device_past_the_last(monkeypatch):
    monkeypatch.setattr(gpu, "_load_driver", lambda: FakeDriver(MIXED))
    with pytest.raises(trt.BuildError, match="device 3 does not exist.*has 3"):
        trt.device_info(3)
    with pytest.raises(ValueError, match="device index"):
        trt.device_info(-1)


def test_build_engine_probes_its_device(monkeypatch, tmp_path):
    """build_engine forwards ``device`` to the probe (the TensorRT target then refuses: no GPU here)."""
    asked: list[int] = []

    def probe(device: int = 0) -> None:
        asked.append(device)

    monkeypatch.setattr(trt, "device_info", probe)
    monkeypatch.setattr(trt.sidecar_mod, "load", lambda p: type("S", (), {"kind": "onnx"})())
    with pytest.raises(trt.BuildError, match="needs an NVIDIA GPU"):
        trt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", batch=(1, 1, 1), target="tensorrt", device=2)
    assert asked == [2]
