"""The JSON sidecar beside every exported ``.onnx`` and ``.engine``.

A graph or engine on its own does not say which classes its channels are, how the
frame was normalised, or which GPU and TensorRT version it was built for. The
sidecar records that, plus the file's sha256, so the runtime can refuse a stale,
foreign or incompatible file with a message instead of producing wrong masks (or,
for a TensorRT engine, crashing). The exporter writes it; the runtime reads it.
No torch, no onnx, no TensorRT here: the runtime imports this module on its own.

The sidecar of ``model.onnx`` is ``model.onnx.json`` (the full file name plus
``.json``), so ``model.onnx``, ``model.fp16.onnx`` and ``model.engine`` can share
a folder without their sidecars colliding.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phaseedge import __version__, names

FORMAT_VERSION = 1
KINDS = ("onnx", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
#: engine targets (``engine.target``) -> the Python module that builds and runs them (export and runtime alike)
TARGET_MODULES: dict[str, str] = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
TARGETS = tuple(TARGET_MODULES)
NO_GPU = "none (built without GPU)"
BATCH_DIM = "B"
#: spatial dims of a graph that takes any allowed tile size (`Sidecar.tile_multiple`)
HEIGHT_DIM, WIDTH_DIM = "H", "W"
_SUFFIX_KIND = {".onnx": "onnx", ".engine": "engine"}
_REBUILD = "rebuild with phaseedge-export"
_CHUNK = 1 << 20


class SidecarError(ValueError):
    """A sidecar is missing, malformed, stale, foreign or incompatible."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` holds ``"B"`` for the dynamic batch."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        _require(d, ("name", "dtype", "shape"), "tensor spec")
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))


@dataclass(frozen=True)
class EngineInfo:
    """What a serialised engine is bound to (absent for ONNX graphs)."""

    target: str  # "tensorrt" | "rtx"
    tensorrt_version: str  # version of the builder module (tensorrt or tensorrt_rtx)
    gpu_name: str  # NO_GPU when built without one (TensorRT-RTX can)
    compute_capability: str | None  # "8.9"; None when built without a GPU
    version_compatible: bool = False
    hardware_compatible: bool = False  # Ampere-and-later hardware compatibility
    strongly_typed: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineInfo:
        _require(d, ("target", "tensorrt_version", "gpu_name", "compute_capability"), "engine info")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def io_specs(tile: int, n_classes: int, dynamic: bool = False) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph I/O the contract fixes (DEVELOPERS.md, phaseedge.names); ``dynamic``: any tile size."""
    h, w = (HEIGHT_DIM, WIDTH_DIM) if dynamic else (tile, tile)
    inputs = (
        TensorSpec(names.IMAGE, names.IMAGE_DTYPE, (BATCH_DIM, 1, h, w)),
        TensorSpec(names.RATIO, names.RATIO_DTYPE, (BATCH_DIM, n_classes)),
    )
    outputs = (TensorSpec(names.PROBS, names.PROBS_DTYPE, (BATCH_DIM, n_classes, h, w)),)
    return inputs, outputs


@dataclass(frozen=True)
class Sidecar:
    """Everything the runtime must know about one exported file.

    ``sha256`` and ``file_name`` are filled in by :func:`write` from the file itself.
    """

    kind: str  # "onnx" | "engine"
    architecture: str
    plm: bool
    class_names: tuple[str, ...]
    n_classes: int
    tile: int
    normalization: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: tuple[int, int, int]  # (min, opt, max)
    precision: str  # "fp32" | "fp16"
    engine: EngineInfo | None = None
    source: dict[str, Any] = field(default_factory=dict)  # provenance: checkpoint, onnx sha256, opset
    pixel_size_m: float | None = None  # metres per pixel of the training frames (None: not normalised)
    trained_on: str | None = None  # dataset name, or "synthetic" (phaseedge.synth)
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics of the run that made it
    # Fully convolutional graphs take any square tile of side tile, tile + m, ..., max_tile (m = tile_multiple,
    # a U-Net's 2**depth); None: the fixed ``tile`` only (SAM).
    tile_multiple: int | None = None
    max_tile: int | None = None
    halo: int | None = None  # measured: pixels from a tile border beyond which predictions stop changing
    quantization: dict[str, Any] = field(default_factory=dict)  # int8: calibration and the accuracy gate
    sha256: str = ""
    file_name: str = ""
    created_by: str = f"phaseedge {__version__}"
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["batch"] = list(self.batch)
        for key in ("inputs", "outputs"):
            d[key] = [{**t, "shape": list(t["shape"])} for t in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sidecar:
        if not isinstance(d, Mapping):
            raise SidecarError(f"sidecar must be a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise SidecarError(f"sidecar has no integer format_version (got {version!r})")
        if version > FORMAT_VERSION:
            raise SidecarError(
                f"sidecar format_version {version} is newer than this phaseedge supports "
                f"({FORMAT_VERSION}); upgrade phaseedge or {_REBUILD}"
            )
        required = ("kind", "architecture", "plm", "class_names", "n_classes", "tile", "normalization",
                    "inputs", "outputs", "batch", "precision", "sha256")
        _require(d, required, "sidecar")
        engine = d.get("engine")
        return cls(
            kind=d["kind"],
            architecture=d["architecture"],
            plm=d["plm"],
            class_names=tuple(d["class_names"]),
            n_classes=d["n_classes"],
            tile=d["tile"],
            normalization=dict(d["normalization"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            batch=tuple(d["batch"]),
            precision=d["precision"],
            engine=None if engine is None else EngineInfo.from_dict(engine),
            source=dict(d.get("source") or {}),
            pixel_size_m=d.get("pixel_size_m"),
            trained_on=d.get("trained_on"),
            metrics=dict(d.get("metrics") or {}),
            tile_multiple=d.get("tile_multiple"),
            max_tile=d.get("max_tile"),
            halo=d.get("halo"),
            quantization=dict(d.get("quantization") or {}),
            sha256=d["sha256"],
            file_name=d.get("file_name", ""),
            created_by=d.get("created_by", ""),
            created_at=d.get("created_at", ""),
            format_version=version,
        )

    def tile_sizes(self) -> range:
        """Tile sides the graph takes: tile .. max_tile in steps of tile_multiple, or the fixed tile."""
        if self.tile_multiple is None:
            return range(self.tile, self.tile + 1)
        return range(self.tile, self.max_tile + 1, self.tile_multiple)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name)


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed in 1 MiB chunks: engines and graphs can be hundreds of MB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write(sidecar: Sidecar, model_path: str | os.PathLike[str]) -> Sidecar:
    """Hash ``model_path`` and write its sidecar beside it (atomically); returns what was written."""
    p = Path(model_path)
    if not p.is_file():
        raise SidecarError(f"cannot write a sidecar for {p}: the file does not exist")
    _check_kind(sidecar, p)
    created_at = sidecar.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    final = dataclasses.replace(sidecar, sha256=sha256_file(p), file_name=p.name, created_at=created_at)
    out = sidecar_path(p)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(final.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return final


def read(model_path: str | os.PathLike[str]) -> Sidecar:
    """Read and validate the sidecar beside ``model_path`` (cheap: does not hash the file)."""
    p = Path(model_path)
    sp = sidecar_path(p)
    if not sp.is_file():
        raise SidecarError(
            f"no sidecar {sp.name} beside {p}: it says which classes, tile and normalisation the "
            f"file expects, and it is written by the exporter; {_REBUILD}"
        )
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"cannot read sidecar {sp}: {e}; {_REBUILD}") from e
    try:
        sc = Sidecar.from_dict(data)
    except SidecarError as e:
        raise SidecarError(f"{sp}: {e}") from e
    except (TypeError, ValueError) as e:
        raise SidecarError(f"{sp} is malformed: {e}; {_REBUILD}") from e
    _check_kind(sc, p)
    return sc


def verify_file(model_path: str | os.PathLike[str], sidecar: Sidecar) -> None:
    """Check the file's sha256 against the sidecar; the error names both hashes."""
    p = Path(model_path)
    if not p.is_file():
        raise SidecarError(f"{p} does not exist")
    actual = sha256_file(p)
    if actual == sidecar.sha256:
        return
    if sidecar.file_name and sidecar.file_name != p.name:
        why = f"the sidecar describes {sidecar.file_name!r}, another model, not {p.name!r}"
    else:
        why = f"{p.name} changed after its sidecar was written (stale or overwritten file)"
    raise SidecarError(
        f"sha256 mismatch for {p}: {why}; sidecar says {sidecar.sha256}, file is {actual}; {_REBUILD}"
    )


def check_belongs(model_path: str | os.PathLike[str], sidecar: Sidecar) -> None:
    """The sidecar is the one written for this very file: same kind, same bytes."""
    _check_kind(sidecar, Path(model_path))
    verify_file(model_path, sidecar)


def load(model_path: str | os.PathLike[str]) -> Sidecar:
    """:func:`read` plus :func:`check_belongs`: what a runtime calls before using a file."""
    sc = read(model_path)
    check_belongs(model_path, sc)
    return sc


#: compute capabilities in the TensorRT-RTX support matrix (7.5 only with an explicit target)
RTX_SUPPORTED: frozenset[tuple[int, int]] = frozenset({(7, 5), (8, 6), (8, 9), (12, 0), (12, 1)})
#: where an RTX engine built without a GPU (no explicit target) runs
RTX_PORTABLE: frozenset[tuple[int, int]] = frozenset({(8, 6), (8, 9), (12, 0)})


def _mismatch(sidecar: Sidecar, what: str, built: str, here: str) -> SidecarError:
    """The one wording of "built for X, this machine has Y" that every engine check raises."""
    return SidecarError(
        f"engine {sidecar.file_name or ''} was built for {what} {built}, this machine has {here}; {_REBUILD}"
    )


def check_engine_version(sidecar: Sidecar, trt_version: str, target: str | None = None) -> None:
    """The TensorRT-version and target half of :func:`check_engine_compatible` (no GPU needed)."""
    if sidecar.kind != "engine" or sidecar.engine is None:
        raise SidecarError(f"sidecar describes a {sidecar.kind} file, not an engine")
    eng = sidecar.engine

    def fail(what: str, built: str, here: str) -> None:
        raise _mismatch(sidecar, what, built, here)

    if target is not None and target != eng.target:
        fail("target", eng.target, target)
    built_v, here_v = _version_tuple(eng.tensorrt_version), _version_tuple(trt_version)
    if eng.version_compatible:
        if here_v < built_v:
            fail("TensorRT version (version-compatible: this one or later)", eng.tensorrt_version, trt_version)
    elif built_v != here_v:
        fail("TensorRT version", eng.tensorrt_version, trt_version)


def check_engine_compatible(
    sidecar: Sidecar,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | tuple[int, int],
    target: str | None = None,
) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming the field that differs.

    Deserialising such an engine fails or misbehaves inside TensorRT; this catches it
    first. Version-compatible engines run on the TensorRT they were built with or any later
    one, later majors included (NVIDIA's forward compatibility; the runtime must then allow
    engine host code, `engine_host_code_allowed`); hardware-compatible ones on any
    Ampere-or-later GPU. TensorRT-RTX engines follow its support matrix (RTX_SUPPORTED):
    built without a GPU they run on RTX_PORTABLE; data-centre GPUs (A100, H100/H200, B200)
    are not supported at all.
    """
    check_engine_version(sidecar, trt_version, target)
    eng = sidecar.engine
    cc = _cc_str(compute_capability)

    def fail(what: str, built: str, here: str) -> None:
        raise _mismatch(sidecar, what, built, here)

    if eng.target == "rtx":
        here = _version_tuple(cc)[:2]
        if here not in RTX_SUPPORTED:
            raise SidecarError(
                f"{gpu_name} (compute capability {cc}) is not a TensorRT-RTX GPU: TensorRT-RTX runs on compute "
                f"capability {', '.join('.'.join(map(str, c)) for c in sorted(RTX_SUPPORTED))} (RTX-class GPUs), "
                f"not on data-centre GPUs such as A100, H100/H200 or B200; build a TensorRT engine on this GPU "
                f"instead (phaseedge-export trt --target tensorrt); {_REBUILD}"
            )
        if eng.compute_capability is None:
            if here not in RTX_PORTABLE:
                fail("TensorRT-RTX's default targets (compute capability 8.6, 8.9, 12.0; built without a GPU)",
                     "", f"{gpu_name} with {cc}: build with an explicit target for it")
            return
        if _version_tuple(eng.compute_capability)[:2] != here:
            fail("compute capability", eng.compute_capability, f"{cc} ({gpu_name})")
        return
    if eng.compute_capability is None:
        if eng.hardware_compatible:
            return
        fail("GPU", eng.gpu_name, f"{gpu_name} (compute capability {cc})")
    if eng.hardware_compatible:
        if _version_tuple(cc) < (8, 0):
            fail("hardware-compatible GPUs (Ampere or later, compute capability >= 8.0)",
                 f"(built on {eng.gpu_name})", f"{gpu_name} with compute capability {cc}")
        return
    if _version_tuple(eng.compute_capability) != _version_tuple(cc):
        fail("compute capability", eng.compute_capability, f"{cc} ({gpu_name})")
    if eng.gpu_name != gpu_name:
        fail("GPU", eng.gpu_name, gpu_name)


def check_io(sidecar: Sidecar, actual: Mapping[str, tuple[str, Sequence[int | str | None]]]) -> None:
    """Compare a loaded graph's I/O ``{name: (dtype, shape)}`` with the sidecar.

    Dynamic dimensions (None, strings, -1) in ``actual`` match the sidecar's named ones (``"B"``, ``"H"``, ``"W"``).
    """
    expected = {t.name: t for t in (*sidecar.inputs, *sidecar.outputs)}
    if set(expected) != set(actual):
        raise SidecarError(f"file has tensors {sorted(actual)}, sidecar says {sorted(expected)}; {_REBUILD}")
    for name, (dtype, shape) in actual.items():
        spec = expected[name]
        if str(dtype) != spec.dtype:
            raise SidecarError(f"tensor {name!r} is {dtype} in the file, {spec.dtype} in the sidecar; {_REBUILD}")
        if len(shape) != len(spec.shape) or any(
            not (isinstance(s, str) and (a is None or isinstance(a, str) or a == -1)) and a != s
            for a, s in zip(shape, spec.shape)
        ):
            raise SidecarError(
                f"tensor {name!r} has shape {list(shape)} in the file, {list(spec.shape)} in the sidecar; {_REBUILD}"
            )


# ----------------------------------------------------------------------------- helpers


def _require(d: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise SidecarError(f"{what} lacks {', '.join(missing)}; {_REBUILD}")


def _by_name(specs: Sequence[TensorSpec], name: str) -> TensorSpec:
    for t in specs:
        if t.name == name:
            return t
    raise KeyError(f"no tensor {name!r}; have {[t.name for t in specs]}")


def _check_kind(sc: Sidecar, p: Path) -> None:
    kind = _SUFFIX_KIND.get(p.suffix)
    if kind is None:
        raise SidecarError(f"{p.name}: expected a .onnx or .engine file")
    if kind != sc.kind:
        raise SidecarError(
            f"sidecar of {p.name} describes a {sc.kind} file ({sc.file_name or 'unnamed'}), not a {kind} "
            f"file: it belongs to another model; {_REBUILD}"
        )


def _cc_str(cc: str | tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}" if isinstance(cc, tuple) else str(cc)


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(v))
    if not parts:
        raise SidecarError(f"cannot parse version {v!r}")
    return tuple(int(x) for x in parts)


def _validate(sc: Sidecar) -> None:
    def bad(msg: str) -> SidecarError:
        return SidecarError(f"invalid sidecar: {msg}")

    if sc.kind not in KINDS:
        raise bad(f"kind must be one of {KINDS}, got {sc.kind!r}")
    if sc.precision not in PRECISIONS:
        raise bad(f"precision must be one of {PRECISIONS}, got {sc.precision!r}")
    if not isinstance(sc.plm, bool):
        raise bad(f"plm must be true/false, got {sc.plm!r}")
    if not isinstance(sc.architecture, str) or not sc.architecture:
        raise bad("architecture must be a non-empty string")
    if not isinstance(sc.n_classes, int) or sc.n_classes < 2:
        raise bad(f"n_classes must be an integer >= 2, got {sc.n_classes!r}")
    if len(sc.class_names) != sc.n_classes or not all(isinstance(c, str) for c in sc.class_names):
        raise bad(f"class_names {list(sc.class_names)} must be {sc.n_classes} strings")
    if not isinstance(sc.tile, int) or sc.tile <= 0:
        raise bad(f"tile must be a positive integer, got {sc.tile!r}")
    if len(sc.batch) != 3 or not all(isinstance(b, int) for b in sc.batch) or not 1 <= sc.batch[0] <= sc.batch[1] <= sc.batch[2]:
        raise bad(f"batch must be integers 1 <= min <= opt <= max, got {list(sc.batch)}")
    ps = sc.pixel_size_m
    if ps is not None and (isinstance(ps, bool) or not isinstance(ps, (int, float)) or not 0 < ps < 1e-3):
        raise bad(f"pixel_size_m must be a positive number of metres per pixel (< 1 mm) or null, got {ps!r}")
    if not isinstance(sc.normalization, dict) or "method" not in sc.normalization:
        raise bad(f"normalization must be a dict with a 'method', got {sc.normalization!r}")
    m = sc.tile_multiple
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1 or sc.tile % m:
            raise bad(f"tile_multiple must be a positive integer dividing tile {sc.tile}, got {m!r}")
        if isinstance(sc.max_tile, bool) or not isinstance(sc.max_tile, int) or sc.max_tile < sc.tile or sc.max_tile % m:
            raise bad(f"max_tile must be a multiple of {m} and >= tile {sc.tile}, got {sc.max_tile!r}")
    elif sc.max_tile is not None:
        raise bad("max_tile needs tile_multiple (a graph with a fixed tile has no size range)")
    if sc.halo is not None and (isinstance(sc.halo, bool) or not isinstance(sc.halo, int)
                                or not 0 <= 2 * sc.halo < (sc.max_tile or sc.tile)):
        raise bad(f"halo must be an integer number of pixels in [0, largest tile / 2), got {sc.halo!r}")
    want_in, want_out = io_specs(sc.tile, sc.n_classes, dynamic=m is not None)
    if tuple(sc.inputs) != want_in or tuple(sc.outputs) != want_out:
        raise bad(
            f"I/O {[dataclasses.asdict(t) for t in (*sc.inputs, *sc.outputs)]} differ from the contract "
            f"{[dataclasses.asdict(t) for t in (*want_in, *want_out)]}"
        )
    if sc.sha256 and not re.fullmatch(r"[0-9a-f]{64}", sc.sha256):
        raise bad(f"sha256 must be 64 lowercase hex digits, got {sc.sha256!r}")
    if (sc.kind == "engine") != (sc.engine is not None):
        raise bad("engine info must be present exactly for kind 'engine'")
    if sc.engine is not None and sc.engine.target not in TARGETS:
        raise bad(f"engine target must be one of {TARGETS}, got {sc.engine.target!r}")
