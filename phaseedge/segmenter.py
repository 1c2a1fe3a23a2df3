"""`Segmenter`: whole SEM frames in, label maps and phase fractions out.

Data flows one way: frame -> check + per-frame normalisation range -> tiles (host ops)
-> backend -> stitch into a row band -> finish rows as soon as they are final -> Result.
Construction is cheap; the backend (session, engine, weights) is set up on first use
or on ``__enter__``. One lock guards the backend, so any number of threads may call
``segment`` on one Segmenter; frames are processed one at a time on the backend.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phaseedge import ratio as ratio_mod
from phaseedge import strategies, tiling
from phaseedge.backends import BACKENDS, Backend, auto_backend_name, get_backend, is_remote
from phaseedge.bundled import SYNTHETIC_WARNING, default_model
from phaseedge.jobs import CLOSED, JobQueue
from phaseedge.metrics import fractions_from_counts
from phaseedge.prepare import Prepared, prepare_scales
from phaseedge.resample import to_shape
from phaseedge.result import Result
from phaseedge.stitch import stitch, stream_tiles
from phaseedge.strategies import AUTO, RATIO_MODES
from phaseedge.tiling import TileGrid, validate_blend, validate_spacing
from phaseedge.tta import resolve as resolve_tta
from phaseedge.tta import validate_scales

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = ["AUTO", "RATIO_MODES", "Segmenter", "default_model"]

class Segmenter:
    """Tiled phase segmentation of whole frames with one model.

    model: path to an ``.onnx`` or ``.engine`` (each with its sidecar), a checkpoint
    directory, ``"default"`` (the bundled model), a ``torch.nn.Module`` (backend "torch")
    or a ready `Backend`. backend: "auto" (from the model: .engine -> tensorrt, .onnx ->
    onnxruntime, directory/module -> torch) or a name. Tiling (`phaseedge.tiling.plan`): by
    default a fully convolutional model with a measured halo gets, per frame, the tile size that
    computes the fewest pixels, neighbours sharing 2 x halo pixels, centre-crop blending; other
    models their own tile with overlap 0.25 and Gaussian blending. tile: a tile side the model
    takes; overlap: a fraction of the tile in [0, 1) (keeps the training tile unless tile is
    given); halo: pixels (overlap = 2 x halo); blend: "gaussian" or "center". batch_size: tiles
    per backend call (default: the backend's maximum, at most tiling.MAX_BATCH_PIXELS pixels).
    ratio_mode: how an expert ratio is used (see `segment`). queue_size bounds
    `submit`'s queue. backend_options go to the backend constructor.
    model_pixel_size_m: metres per pixel of the model's training images. When given, a
    frame whose pixel size is known (a path or `phaseedge.io.Frame` with SEM metadata) is
    resampled to it before tiling and the labels are mapped back to the frame's own grid,
    so a model sees phases at the scale it learned them; frames without a pixel size are
    segmented as they are. Without it, the model's own training pixel size (checkpoint
    config or sidecar ``pixel_size_m``) is used when it has one.
    tta: test-time augmentation (`phaseedge.tta`): "flips" (or True) runs every tile also
    flipped (4 passes), "d4" also transposed (8 passes: every 90-degree rotation and
    reflection), and averages: slower, usually a little more accurate, and what
    `phaseedge-train eval --tta` / `--tta-mode d4` reports. ``self.tta`` is the mode name or None.
    scales: multi-scale inference: the frame is segmented at each of these multiples of the
    model's pixel size (0.8 = finer pixels, a larger frame) and the class probabilities, mapped
    back to the frame's own grid, are averaged; the cost grows as the sum of 1 / s^2. Default
    (1.0,): one pass. A ratio of "auto" (or a partial one) is estimated once, at the scale nearest
    1, and fed to every scale; `Result.ratio` is that vector. What `phaseedge-train eval --scales`
    reports (docs/results.md).
    """

    def __init__(self, model: Any, backend: str = "auto", device: int = 0, overlap: float | None = None,
                 blend: str | None = None, batch_size: int | None = None, ratio_mode: str = "global",
                 queue_size: int = 4, backend_options: dict[str, Any] | None = None,
                 model_pixel_size_m: float | None = None, tta: bool | str | None = False, tile: int | None = None,
                 halo: int | None = None, scales: Iterable[float] | None = None) -> None:
        self.overlap, self.halo = validate_spacing(overlap, halo)
        self.blend = None if blend is None else validate_blend(blend)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
            # tile 0 would read as "unset"
            raise ValueError(f"tile must be a whole number of pixels >= 1 or None, got {tile!r}")
        self.requested_tile = tile
        if ratio_mode not in RATIO_MODES:
            raise ValueError(f"ratio_mode must be one of {', '.join(RATIO_MODES)}, got {ratio_mode!r}")
        self.ratio_mode = ratio_mode
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.batch_size = batch_size
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        self.queue_size = queue_size
        if model_pixel_size_m is not None and not (isinstance(model_pixel_size_m, (int, float))
                                                   and not isinstance(model_pixel_size_m, bool)
                                                   and np.isfinite(model_pixel_size_m) and model_pixel_size_m > 0):
            raise ValueError(f"model_pixel_size_m must be a positive number of metres, got {model_pixel_size_m!r}")
        self.model_pixel_size_m = None if model_pixel_size_m is None else float(model_pixel_size_m)
        self.tta = resolve_tta(tta)
        self.scales = validate_scales(scales)
        self.device = device
        self._options = dict(backend_options or {})
        self._backend: Backend | None = None
        if isinstance(model, Backend):
            if backend not in ("auto", model.name):
                raise ValueError(f"backend={backend!r} given with a ready {model.name!r} backend")
            self._backend, self.model, self.backend_name = model, model, model.name
        else:
            if isinstance(model, str) and model == "default":
                model = default_model()
            if isinstance(model, (str, os.PathLike)) and not is_remote(model):  # a triton:// URL stays a string
                model = Path(model)
                if not model.exists():
                    raise FileNotFoundError(f"model not found: {model}")
            if backend != "auto" and backend not in BACKENDS:
                raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
            self.model = model
            self.backend_name = auto_backend_name(model) if backend == "auto" else backend
        self._lock = threading.RLock()  # the backend: one frame at a time
        self._init_lock = threading.Lock()
        self._closed = False
        self._jobs = JobQueue(queue_size)

    # ------------------------------------------------------------------ lifecycle
    @property
    def backend(self) -> Backend:
        """The backend, set up on first access (the heavy step)."""
        if self._backend is None:
            with self._init_lock:
                self._check_open()
                if self._backend is None:
                    self._backend = get_backend(self.backend_name, self.model, self.device, **self._options)
                    if self._backend.trained_on == "synthetic":
                        warnings.warn(SYNTHETIC_WARNING, UserWarning, stacklevel=3)
        return self._backend

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.backend.class_names)

    @property
    def n_classes(self) -> int:
        return self.backend.n_classes

    @property
    def tile(self) -> int:
        """The tile side the model takes now (a fully convolutional one: the last frame's)."""
        return self.backend.tile

    def tiling_for(self, height: int, width: int) -> tuple[TileGrid, str]:
        """The tile grid and blend a ``height`` x ``width`` frame (at the model's pixel size) gets."""
        b = self.backend
        return tiling.plan(height, width, b.allowed_tiles(), b.halo, self.requested_tile, self.overlap, self.halo,
                           self.blend)

    def __enter__(self) -> Self:
        _ = self.backend
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued `submit` work, stop the worker and release the backend.

        Afterwards every call that would segment raises RuntimeError (closing again is
        fine). A `submit` waiting for room in the queue raises that error at once; every
        frame already queued is segmented first, so each Future returned resolves.
        """
        with self._init_lock:  # a backend being set up now is released below
            self._closed = True
        self._jobs.close()
        with self._lock:
            if self._backend is not None and self._backend is not self.model:
                self._backend.close()
                self._backend = None

    def __repr__(self) -> str:
        return (f"Segmenter(model={str(self.model)!r}, backend={self.backend_name!r}, tile={self.requested_tile}, "
                f"overlap={self.overlap}, halo={self.halo}, blend={self.blend!r}, ratio_mode={self.ratio_mode!r})")

    # ------------------------------------------------------------------ public API
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(CLOSED)

    def _ratio(self, ratio: Any) -> np.ndarray | str | ratio_mod.Partial | None:
        """The checked ratio: a vector in class order, a mapping by class name, "auto", or a
        partial mapping with ``"rest": "auto"`` (`phaseedge.ratio.check`)."""
        self._check_open()
        return ratio_mod.check(ratio, self.n_classes, self.class_names)

    def segment(self, image: Any, ratio: Any = None, return_probabilities: bool = False) -> Result:
        """Segment one frame: a 2-D array, a `phaseedge.io.Frame`, or a path (read with
        `phaseedge.io.read_image`, information band removed).

        ratio: the expert's phase ratio (length n_classes in class order, or a mapping by
        class name such as ``{"martensite": 0.3, "ferrite": 0.7}``; any positive scale; None
        or zeros = unknown; ``"auto"``: the model's own ratio-free estimate of the frame's fractions,
        from a first pass, then used as the ratio; a partial ratio ``{"martensite": 0.10, "rest":
        "auto"}``: the named fractions as given, the rest shared in proportion to that estimate —
        `Result.ratio_source` says which), checked by `phaseedge.ratio.check`. How it is used
        depends on ``ratio_mode`` (`phaseedge.strategies`): "global" feeds it to every tile;
        "local" feeds each tile its share of it, fitted from a ratio-free first pass;
        "calibrate" runs the model ratio-free and shifts the class priors so the predicted
        fractions match the ratio; "none" ignores it. Without a ratio every mode is one
        ratio-free pass.
        """
        r = self._ratio(ratio)
        prepared = self._prepare(image)
        return self._segment_prepared(prepared, r, return_probabilities)

    def segment_many(self, images: Iterable[Any], ratio: Any = None,
                     return_probabilities: bool = False) -> Iterator[Result]:
        """Segment a stream of frames (arrays or paths), yielding results in order.

        The next frame is read, checked and its range computed on a helper thread while
        the current one is inferred and stitched. An error for one frame is raised when
        its result is due, which ends the stream.
        """
        r = self._ratio(ratio)
        it = iter(images)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="phaseedge-prepare") as pool:
            pending: deque[Future] = deque()

            def queue_next() -> None:
                for image in it:
                    pending.append(pool.submit(self._prepare, image))
                    return

            queue_next()
            while pending:
                prepared = pending.popleft().result()
                queue_next()
                yield self._segment_prepared(prepared, r, return_probabilities)

    def submit(self, image: Any, ratio: Any = None, return_probabilities: bool = False,
               block: bool = True, timeout: float | None = None) -> Future:
        """Queue a frame for a background worker; returns a `Future` of its `Result`.

        The frame is copied (acquisition software reuses its buffers). At most
        ``queue_size`` frames wait: when the queue is full, ``submit`` blocks until one
        starts (``block=True``, up to ``timeout`` seconds) or raises `queue.Full`
        (``block=False``, or the timeout passed). Bad ratios are refused here; bad frames
        come back as the future's exception.
        """
        r = self._ratio(ratio)
        if not isinstance(image, (str, os.PathLike)):
            from phaseedge.io import Frame

            if isinstance(image, Frame):  # keep its pixel size
                image = dataclasses.replace(image, pixels=np.array(image.pixels, copy=True))
            else:
                image = np.array(image, copy=True)
        return self._jobs.put(lambda: self._segment_prepared(self._prepare(image), r, return_probabilities),
                              block, timeout)

    # ------------------------------------------------------------------ internals
    def _prepare(self, image: Any) -> tuple[Prepared, ...]:
        backend = self.backend
        return prepare_scales(image, backend.normalization,
                              self.model_pixel_size_m or getattr(backend, "pixel_size_m", None), self.scales)

    def _segment_prepared(self, scaled: tuple[Prepared, ...], spec: np.ndarray | str | ratio_mod.Partial | None,
                          want_probs: bool) -> Result:
        """One pass per scale; several are averaged as probabilities on the frame's own grid.

        The ratio is resolved once, at the scale nearest the model's pixel size, and that vector
        feeds every other scale: one ratio-free survey for ``"auto"`` or a partial ratio, not one
        per scale, and the result's ``ratio`` is the one every pass used."""
        if len(scaled) == 1:
            return self._segment_one(scaled[0], spec, want_probs)
        ref = min(range(len(scaled)), key=lambda i: abs(self.scales[i] - 1.0))
        with self._lock:
            t0 = time.perf_counter()
            first = self._segment_one(scaled[ref], spec, True)
            resolved = spec if first.ratio_source in (None, "given") else first.ratio
            probs, timings = None, {}
            for i, p in enumerate(scaled):  # summed in the order of `scales`, as they come
                r = first if i == ref else self._segment_one(p, resolved, True)
                if probs is None:
                    probs = r.probabilities
                else:
                    probs += r.probabilities
                for k, v in r.timings.items():
                    timings[k] = timings.get(k, 0.0) + v
            probs /= np.float32(len(scaled))
            labels = probs.argmax(axis=0).astype(np.uint8)
            counts = np.bincount(labels.ravel(), minlength=len(probs)).astype(np.int64)
            timings["total"] = time.perf_counter() - t0 + sum(p.seconds for p in scaled)
        return dataclasses.replace(first, labels=labels, counts=counts, timings=timings,
                                   probabilities=probs if want_probs else None,
                                   fractions=dict(zip(first.class_names, fractions_from_counts(counts).tolist())))

    def _segment_one(self, p: Prepared, spec: np.ndarray | str | ratio_mod.Partial | None,
                     want_probs: bool) -> Result:
        with self._lock:
            backend = self.backend
            t0 = time.perf_counter()
            grid, blend = self.tiling_for(*p.frame.shape)
            backend.use_tile(grid.tile)
            bs = tiling.batch_size(self.batch_size, backend.max_batch, grid.tile)
            timings = {"prepare": p.seconds, "survey": 0.0, "tiles": 0.0, "infer": 0.0, "stitch": 0.0, "finish": 0.0}
            survey = strategies.Survey(backend, p.frame, p.lo, p.hi, grid, bs, timings, self.tta)
            t = time.perf_counter()
            r, source = strategies.resolve(spec, survey)
            plan = strategies.plan(self.ratio_mode, r, survey)
            timings["survey"] = time.perf_counter() - t
            batches = grid.batches(bs)
            # a resampled frame keeps its probabilities: its labels are their argmax at frame resolution
            keep_probs = want_probs or p.original_shape is not None
            tiles = stream_tiles(backend, p.frame, p.lo, p.hi, grid.origins, plan.tile_ratios, batches, timings,
                                 self.tta)
            labels, counts, probs = stitch(tiles, grid, batches, blend, backend.n_classes, p.frame.shape,
                                           plan.class_weights, keep_probs, timings)
            if probs is not None and plan.class_weights is not None:  # return what the labels came from
                probs *= plan.class_weights[:, None, None]
                probs /= probs.sum(axis=0, keepdims=True)
            if p.original_shape is not None:  # back to the frame's own pixel grid
                labels, probs = to_shape(labels, probs, p.original_shape)
                counts = np.bincount(labels.ravel(), minlength=backend.n_classes).astype(np.int64)
                probs = probs if want_probs else None
            timings["total"] = time.perf_counter() - t0 + p.seconds
        names = tuple(backend.class_names)
        return Result(labels=labels, fractions=dict(zip(names, fractions_from_counts(counts).tolist())),
                      class_names=names, counts=counts, timings=timings, probabilities=probs, ratio=r,
                      ratio_mode=self.ratio_mode, backend=backend.name, ratio_source=source)
