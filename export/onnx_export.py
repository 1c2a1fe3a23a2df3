"""PyTorch checkpoint -> verified ONNX graph with the runtime's I/O contract.

The graph takes the normalised tile as float16 (half the bytes of float32 on the
host-to-device copy), casts it to float32 for the model, applies the softmax in the
graph and returns float16 probabilities; ``ratio`` stays float32. The batch is
dynamic; so are height and width for fully convolutional models (U-Nets: any multiple of
2**depth from the training tile to DEFAULT_MAX_TILE, recorded in the sidecar with the halo
measured by `phaseedge.export.halo`), SAM keeps its fixed tile.

We use the dynamo exporter (``torch.onnx.export(dynamo=True)``), the default since
PyTorch 2.9: it captures the model with ``torch.export`` (no tracing, so no
TracerWarning and no silently frozen Python branches), maps ``nn.LayerNorm`` to one
``LayerNormalization`` node at opset >= 17, and names dynamic axes from
``torch.export.Dim``. The TorchScript exporter (``dynamo=False``) is deprecated.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from phaseedge.export import halo as halo_mod
from phaseedge.export.check import ort_session, random_inputs
from phaseedge.export.dynamic import DEFAULT_MAX_TILE
from torch import nn

from phaseedge import __version__, names
from phaseedge import sidecar as sidecar_mod

DEFAULT_OPSET = 18
DEFAULT_BATCH = (1, 4, 8)
DEFAULT_ATOL = 2e-3  # on probabilities in [0, 1]; float16 output rounding alone is up to 2.4e-4
DEFAULT_MIN_AGREEMENT = 0.995  # argmax agreement; random-weight models have near-ties


class ExportError(RuntimeError):
    """Export produced a graph that fails a check (structure or numerics)."""


class ExportWrapper(nn.Module):
    """The graph's contract around a model: float16 image in, softmax float16 probs out.

    A PLM-off model ignores ``ratio``; the exporter would then drop the input, and one
    runtime could not serve both kinds. A zero-weighted use keeps it in the graph
    (and in TensorRT's engine bindings) without changing the result for finite ratios.
    """

    def __init__(self, model: nn.Module, plm: bool) -> None:
        super().__init__()
        self.model = model
        self.plm = plm

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        logits = self.model(image.float(), ratio)
        if not self.plm:
            logits = logits + (ratio.sum(dim=1) * 0.0).reshape(-1, 1, 1, 1)
        return torch.softmax(logits.float(), dim=1).to(torch.float16)


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar needs that the module itself does not carry."""

    architecture: str
    plm: bool
    class_names: tuple[str, ...]
    tile: int
    normalization: dict[str, Any]
    pixel_size_m: float | None = None
    trained_on: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParityReport:
    batches: tuple[int, ...]
    max_abs_err: float
    argmax_agreement: float

    def __str__(self) -> str:
        return (f"ONNX Runtime vs PyTorch on B={','.join(map(str, self.batches))}: "
                f"max |dprobs| {self.max_abs_err:.2e}, argmax agreement {self.argmax_agreement:.4%}")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: sidecar_mod.Sidecar
    parity: ParityReport
    seconds: float
    op_counts: dict[str, int]


def load_checkpoint(ckpt: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Load a training checkpoint directory (model.safetensors + config.json), LoRA merged."""
    from phaseedge.train import checkpoint
    from phaseedge.train.models.sam import LoRASam

    cfg = checkpoint.read_config(ckpt)
    model = checkpoint.load(ckpt, map_location="cpu")
    if isinstance(model, LoRASam) and not model.config["merged"]:
        model.merge()  # adapters folded into qkv: plain Linear layers in the graph
    info = ModelInfo(
        architecture=str(cfg["architecture"]),
        plm=bool(model.plm_enabled),
        class_names=tuple(cfg["class_names"]),
        tile=int(cfg["tile"]),
        normalization=dict(cfg["normalization"]),
        pixel_size_m=cfg.get("pixel_size_m"),
        trained_on=cfg.get("trained_on"),
        metrics=dict(cfg.get("val_metrics") or {}),
    )
    return model.eval(), info


def model_info(model: nn.Module, class_names: tuple[str, ...]) -> ModelInfo:
    """ModelInfo of an in-memory model from build_model (its .config)."""
    cfg = model.config
    return ModelInfo(architecture=str(cfg["architecture"]), plm=bool(model.plm_enabled),
                     class_names=tuple(class_names), tile=int(cfg["tile"]),
                     normalization=dict(cfg["normalization"]), pixel_size_m=cfg.get("pixel_size_m"))


def compare_with_torch(
    path: str | Path, wrapper: nn.Module, tile: int, n_classes: int, batches: tuple[int, ...] = (1, 3),
    tiles: tuple[int, ...] = (),
) -> ParityReport:
    """ONNX Runtime vs PyTorch on random tiles of side ``tile`` (and one each of ``tiles``)."""
    sess = ort_session(path)
    worst, agree, total = 0.0, 0, 0
    for i, (b, t) in enumerate([(b, tile) for b in batches] + [(1, t) for t in tiles]):
        image, ratio = random_inputs(b, t, n_classes, seed=i)
        (got,) = sess.run([names.PROBS], {names.IMAGE: image, names.RATIO: ratio})
        with torch.inference_mode():
            ref = wrapper(torch.from_numpy(image), torch.from_numpy(ratio)).numpy()
        if got.shape != ref.shape or got.dtype != np.float16:
            raise ExportError(f"ONNX output is {got.dtype}{list(got.shape)}, expected float16{list(ref.shape)}")
        worst = max(worst, float(np.abs(got.astype(np.float32) - ref.astype(np.float32)).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += got.shape[0] * got.shape[2] * got.shape[3]
    return ParityReport(tuple(batches), worst, agree / total)


def export_model(
    model: nn.Module,
    info: ModelInfo,
    out: str | Path,
    *,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    opset: int = DEFAULT_OPSET,
    verify_batches: tuple[int, ...] = (1, 3),
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    source: dict[str, Any] | None = None,
    max_tile: int = DEFAULT_MAX_TILE,
    measure_halo: bool = True,
    log=print,
) -> ExportResult:
    """Export, check structure, compare with PyTorch in ONNX Runtime, then write the sidecar
    (and, for a fully convolutional model, measure its halo into it unless ``measure_halo`` is off).

    Nothing is left at ``out`` if a check fails (a half-verified graph must not be used).
    """
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNorm would be decomposed; use --opset 17 or later")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch must satisfy 1 <= min <= opt <= max, got {batch}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {out}")
    n = len(info.class_names)
    model = model.eval()
    wrapper = ExportWrapper(model, info.plm).eval()
    image, ratio = random_inputs(max(2, batch[1]), info.tile, n)
    bdim = torch.export.Dim("B", min=1, max=max(batch[2], 2))
    m = getattr(model, "tile_multiple", None)  # fully convolutional: dynamic height and width
    image_dims: dict[int, Any] = {0: bdim}
    if m is not None:
        if max_tile < info.tile or max_tile % m:
            raise ValueError(f"max_tile {max_tile} must be a multiple of {m} and >= the training tile {info.tile}")
        image_dims.update({2: m * torch.export.Dim("h", min=1, max=max_tile // m),
                           3: m * torch.export.Dim("w", min=1, max=max_tile // m)})

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    log("tracing with torch.export and translating to ONNX (a minute or two for SAM-B on CPU)...")
    with warnings.catch_warnings(), _quiet_torch_onnx_logs():
        # Internal notices of torch 2.13's exporter, not about our model.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (torch.from_numpy(image), torch.from_numpy(ratio)),
            str(out),
            dynamo=True,
            input_names=[names.IMAGE, names.RATIO],
            output_names=[names.PROBS],
            opset_version=opset,
            dynamic_shapes={names.IMAGE: image_dims, names.RATIO: {0: bdim}},
            external_data=False,
            optimize=True,
            verbose=False,
        )
    seconds = time.perf_counter() - t0
    try:
        ops = check_graph(out, model, info, dynamic=m is not None)
        other = () if m is None else (info.tile + 2 * m,)
        log(f"exported in {seconds:.0f}s; comparing with PyTorch in ONNX Runtime on B={verify_batches}"
            f"{f' and tile {other[0]}' if other else ''}...")
        parity = compare_with_torch(out, wrapper, info.tile, n, verify_batches, other)
        log(str(parity))
        if not parity.max_abs_err <= atol or parity.argmax_agreement < min_agreement:
            raise ExportError(f"{parity} exceeds tolerance (atol {atol}, agreement >= {min_agreement})")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    inputs, outputs = sidecar_mod.io_specs(info.tile, n, dynamic=m is not None)
    sc = sidecar_mod.write(
        sidecar_mod.Sidecar(
            kind="onnx", architecture=info.architecture, plm=info.plm, class_names=info.class_names,
            n_classes=n, tile=info.tile, normalization=info.normalization, inputs=inputs, outputs=outputs,
            batch=batch, precision="fp32", pixel_size_m=info.pixel_size_m, trained_on=info.trained_on,
            metrics=dict(info.metrics), tile_multiple=m, max_tile=None if m is None else max_tile,
            source={**(source or {}), "opset": opset, "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
                    "phaseedge": __version__},
        ),
        out,
    )
    if m is not None and measure_halo:
        halo_mod.record(out, log=log)
        sc = sidecar_mod.load(out)
    return ExportResult(out, sc, parity, seconds, ops)


@contextlib.contextmanager
def _quiet_torch_onnx_logs():
    """Hide the exporter's "torchvision is not installed, skipping torchvision::nms" log lines."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_graph(path: Path, model: nn.Module, info: ModelInfo, dynamic: bool = False) -> dict[str, int]:
    """onnx.checker, the I/O contract, and one LayerNormalization node per nn.LayerNorm."""
    onnx.checker.check_model(str(path))
    g = onnx.load(str(path), load_external_data=False)
    ops = dict(collections.Counter(node.op_type for node in g.graph.node))
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    if ops.get("LayerNormalization", 0) < n_ln:
        raise ExportError(f"{n_ln} nn.LayerNorm modules but {ops.get('LayerNormalization', 0)} "
                          "LayerNormalization nodes: LayerNorm was decomposed")
    actual = {v.name: (_onnx_dtype(v), _onnx_shape(v)) for v in (*g.graph.input, *g.graph.output)}
    inputs, outputs = sidecar_mod.io_specs(info.tile, len(info.class_names), dynamic=dynamic)
    probe = sidecar_mod.Sidecar(
        kind="onnx", architecture=info.architecture, plm=info.plm, class_names=info.class_names,
        n_classes=len(info.class_names), tile=info.tile, normalization=info.normalization,
        inputs=inputs, outputs=outputs, batch=(1, 1, 1), precision="fp32",
        tile_multiple=info.tile if dynamic else None, max_tile=info.tile if dynamic else None,
    )
    try:
        sidecar_mod.check_io(probe, actual)
    except sidecar_mod.SidecarError as e:
        raise ExportError(f"exported graph breaks the I/O contract: {e}") from e
    return ops


def _onnx_dtype(v: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name


def _onnx_shape(v: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in v.type.tensor_type.shape.dim]
