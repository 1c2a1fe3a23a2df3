"""A Triton Inference Server model repository from exported phaseedge models.

    DIR/NAME/config.pbtxt
    DIR/NAME/1/model.onnx   + model.onnx.json          (onnxruntime_onnx)
    DIR/NAME/1/model.plan   + model.plan.json          (tensorrt_plan, one engine)
    DIR/NAME/1/model_sm86.plan + ..., cc_model_filenames (several engines, one per GPU kind)

Everything in config.pbtxt comes from the sidecars (verified against the files' sha256
first): tensor names, dtypes and dims, the engine profile's largest batch, and the
``phaseedge_*`` parameters (class names, normalisation, tile, ...) that the ``triton``
backend reads back from the server, so a client needs nothing but the URL. The config is
written as protobuf text by hand (no tritonclient needed to export); the tests parse it
with the ``ModelConfig`` schema tritonclient ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phaseedge import names, sidecar
from phaseedge.outputs import atomic_directory
from phaseedge.sidecar import Sidecar, SidecarError

PLATFORMS = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}
#: sidecar dtype -> Triton config data_type
DATA_TYPES = {"float16": "TYPE_FP16", "float32": "TYPE_FP32"}
#: model config parameters the triton backend reads (phaseedge/backends/triton.py)
PARAMETER_PREFIX = "phaseedge_"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TritonRepository:
    """What `write_repository` wrote."""

    model_dir: Path  # DIR/NAME
    config: Path  # DIR/NAME/config.pbtxt
    files: tuple[Path, ...]  # the model file(s) under DIR/NAME/<version>/
    platform: str
    max_batch_size: int


def parameters(sc: Sidecar) -> dict[str, str]:
    """The ``phaseedge_*`` model config parameters: what a client cannot read from the tensors."""
    values = {
        "class_names": json.dumps(list(sc.class_names), ensure_ascii=False),
        "normalization": json.dumps(sc.normalization, ensure_ascii=False),
        "tile": str(sc.tile),
        "precision": sc.precision,
        "pixel_size_m": "" if sc.pixel_size_m is None else repr(float(sc.pixel_size_m)),
        "trained_on": sc.trained_on or "",
        "architecture": sc.architecture,
        "sha256": sc.sha256,
    }
    return {PARAMETER_PREFIX + k: v for k, v in values.items()}


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> str:
    if dtype not in DATA_TYPES:
        raise SidecarError(f"tensor {name!r} has dtype {dtype}, which this writer cannot map to a Triton type")
    return (f"  {{\n    name: {_quote(name)}\n    data_type: {DATA_TYPES[dtype]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def config_text(sc: Sidecar, name: str, max_batch_size: int, gpu: bool = True, instances: int = 1,
                queue_delay_us: int = 500, cc_files: dict[str, str] | None = None, source: str = "") -> str:
    """config.pbtxt for one model: batch dimension left out of every ``dims`` (Triton adds it)."""
    def dims(spec: sidecar.TensorSpec) -> list[int]:
        if spec.shape[0] != sidecar.BATCH_DIM:
            raise SidecarError(f"tensor {spec.name!r} has no leading batch dimension: {list(spec.shape)}")
        # a graph that takes any tile size is served at its training tile (fixed dims in the config)
        return [sc.tile if d in (sidecar.HEIGHT_DIM, sidecar.WIDTH_DIM) else int(d) for d in spec.shape[1:]]

    inputs = ",\n".join(_tensor(t.name, t.dtype, dims(t)) for t in (sc.input(names.IMAGE), sc.input(names.RATIO)))
    outputs = _tensor(names.PROBS, sc.output(names.PROBS).dtype, dims(sc.output(names.PROBS)))
    lines = [
        f"# written by phaseedge-export triton{f' from {source}' if source else ''}",
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORMS[sc.kind])}",
        f"max_batch_size: {max_batch_size}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
    ]
    if cc_files:
        lines += [f"cc_model_filenames {{\n  key: {_quote(cc)}\n  value: {_quote(f)}\n}}" for cc, f in cc_files.items()]
    lines += [f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}"
              for k, v in parameters(sc).items()]
    return "\n".join(lines) + "\n"


def _check_same_model(sidecars: Sequence[Sidecar], paths: Sequence[Path]) -> None:
    """Several engines of one repository entry must be builds of one model for different GPUs."""
    first = sidecars[0]
    for sc, p in zip(sidecars[1:], paths[1:]):
        for field in ("class_names", "tile", "n_classes", "normalization", "precision", "architecture", "plm"):
            if getattr(sc, field) != getattr(first, field):
                raise ValueError(f"{p.name} and {paths[0].name} differ in {field} ({getattr(sc, field)!r} vs "
                                 f"{getattr(first, field)!r}): one repository entry serves one model")


def write_repository(models: Sequence[str | os.PathLike[str]], repo: str | os.PathLike[str],
                     name: str = "phaseedge", max_batch_size: int | None = None, gpu: bool = True,
                     instances: int = 1, queue_delay_us: int = 500) -> TritonRepository:
    """Write ``repo/name`` for one ``.onnx`` or one or more ``.engine`` files (each with its sidecar).

    max_batch_size: ONNX only (default: the sidecar's batch maximum); an engine's is its
    optimisation profile's maximum (the smallest over several engines). gpu=False
    (KIND_CPU) is for ONNX only. Several engines must be the same model built for
    different compute capabilities: they go in a ``cc_model_filenames`` map.
    The entry is assembled in a temporary folder and renamed into place, so a failed
    export leaves nothing half-written; an existing ``repo/name`` is refused (ValueError).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only")
    for what, value in (("instances", instances), ("queue_delay_us", queue_delay_us)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if what == "instances" else 0):
            raise ValueError(f"{what} must be an integer >= {1 if what == 'instances' else 0}, got {value!r}")
    paths = [Path(m) for m in models]
    if not paths:
        raise ValueError("give at least one model file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"model file not found: {p}")
    sidecars = [sidecar.load(p) for p in paths]  # read + kind + sha256: never deploy a stale file
    kinds = {sc.kind for sc in sidecars}
    if len(kinds) > 1:
        raise ValueError("give either one .onnx or one or more .engine files, not both")
    kind = kinds.pop()
    first = sidecars[0]
    if kind == "onnx":
        if len(paths) > 1:
            raise ValueError("one .onnx per repository entry (several files are for engines of different GPUs)")
        mbs = first.batch[2] if max_batch_size is None else max_batch_size
        if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {mbs!r}")
        files = {"model.onnx": paths[0]}
        cc_files = None
    else:
        if max_batch_size is not None:
            raise ValueError("an engine's max_batch_size is its optimisation profile's maximum; "
                             "rebuild it with phaseedge-export trt --batch to change it")
        if not gpu:
            raise ValueError("a TensorRT engine runs on a GPU only (KIND_CPU is for ONNX)")
        for sc, p in zip(sidecars, paths):
            if sc.engine.target != "tensorrt":
                raise ValueError(f"{p.name} is a TensorRT-RTX engine; Triton's tensorrt_plan backend runs "
                                 "TensorRT engines (phaseedge-export trt --target tensorrt)")
            if sc.batch[0] != 1:
                raise ValueError(f"{p.name}'s profile starts at batch {sc.batch[0]}; Triton sends any batch "
                                 "from 1 up, so rebuild it with phaseedge-export trt --batch 1:OPT:MAX")
        _check_same_model(sidecars, paths)
        mbs = min(sc.batch[2] for sc in sidecars)
        if len(paths) == 1:
            files, cc_files = {"model.plan": paths[0]}, None
        else:
            ccs = [sc.engine.compute_capability for sc in sidecars]
            for cc, p in zip(ccs, paths):
                if cc is None:
                    raise ValueError(f"{p.name} was built without a GPU target (no compute capability): "
                                     "it cannot go in a per-compute-capability map")
            if len(set(ccs)) != len(ccs):
                raise ValueError(f"two engines for the same compute capability: {ccs}")
            files = {f"model_sm{cc.replace('.', '')}.plan": p for cc, p in zip(ccs, paths)}
            cc_files = {cc: f for cc, f in zip(ccs, files)}

    root = Path(repo)
    final = root / name
    if final.exists():
        raise ValueError(f"{final} exists: remove it or choose another --name")
    root.mkdir(parents=True, exist_ok=True)
    source = ", ".join(f"{p.name} (sha256 {sc.sha256[:12]})" for p, sc in zip(paths, sidecars))
    text = config_text(first, name, mbs, gpu=gpu, instances=instances, queue_delay_us=queue_delay_us,
                       cc_files=cc_files, source=source)
    with atomic_directory(final) as tmp:
        version = tmp / "1"
        version.mkdir()
        for file_name, src in files.items():
            shutil.copyfile(src, version / file_name)
            shutil.copyfile(sidecar.sidecar_path(src), version / f"{file_name}.json")
        (tmp / "config.pbtxt").write_text(text, encoding="utf-8")
    return TritonRepository(model_dir=final, config=final / "config.pbtxt",
                            files=tuple(final / "1" / f for f in files), platform=PLATFORMS[kind],
                            max_batch_size=mbs)
