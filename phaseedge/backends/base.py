"""The one interface every inference backend implements.

A backend turns a batch of normalised tiles into class probabilities and knows
nothing about frames, tiling or ratios: that keeps ONNX Runtime, TensorRT and
PyTorch interchangeable behind `phaseedge.Segmenter`.

Construction does the heavy set-up (sessions, engines, device memory); the
Segmenter therefore constructs its backend lazily, on first use or ``__enter__``
(Polygraphy's loader/runner split).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from phaseedge.normalize import METHOD

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

    from phaseedge.sidecar import Sidecar

#: what a backend reports when its model records no normalisation: ``phaseedge.normalize.METHOD``
DEFAULT_NORMALIZATION: dict[str, Any] = METHOD


class Backend(abc.ABC):
    """Runs a segmentation model on batches of tiles.

    Subclasses set these attributes in ``__init__``:

    - ``name``: registry name ("onnxruntime", "tensorrt", "torch", ...)
    - ``tile``: side T of the square tiles the model takes
    - ``n_classes`` and ``class_names`` (tuple of str, length n_classes)
    - ``max_batch``: largest B ``infer`` accepts
    - ``normalization``: the per-frame normalisation dict from the sidecar/config
    - ``precision``: "fp32", "fp16", ... (what actually runs, for reports)
    - ``device``: human-readable description of where it runs (e.g. "CPU", "cuda:0")
    - ``pixel_size_m``: metres per pixel of the model's training frames, or None
    - ``trained_on``: what the model was trained on (sidecar/config), or None
    - ``tile_sizes``: the tile sides a fully convolutional graph takes (None: ``tile`` only);
      `use_tile` switches ``tile`` between them
    - ``halo``: measured pixels from a tile border beyond which predictions stop changing, or None
    """

    name: str = "base"
    tile: int
    n_classes: int
    class_names: tuple[str, ...]
    max_batch: int
    normalization: dict[str, Any] = DEFAULT_NORMALIZATION
    precision: str = "fp32"
    device: str = "CPU"
    pixel_size_m: float | None = None
    trained_on: str | None = None  # dataset name, "synthetic", or None when the model does not say
    tile_sizes: Sequence[int] | None = None
    halo: int | None = None

    @abc.abstractmethod
    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Probabilities for one batch.

        images: float16 ``[B, 1, T, T]`` in [0, 1]; ratio: float32 ``[B, n]`` (zeros =
        unknown); 1 <= B <= max_batch. Returns float16 or float32 ``[B, n, T, T]``
        (softmax over classes). The returned array may be reused by the next call:
        copy it if you keep it.
        """

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Probabilities for a stream of ``(images, ratio)`` batches, in order.

        The default runs them one after another. A backend that can overlap work
        (upload batch k+1 while batch k runs) overrides this; it may pull the next
        batch from ``batches`` before yielding the current result, so the caller
        must consume each yielded array before asking for the next one.
        """
        for images, ratio in batches:
            yield self.infer(images, ratio)

    def infer_ahead(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """An ``infer_many`` that runs ``infer`` on batch k+1 in a helper thread while the
        caller stitches batch k. For backends whose ``infer`` releases the GIL and returns
        a fresh array each call (ONNX Runtime on a GPU); the helper thread serialises calls.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"phaseedge-{self.name}") as pool:
            pending: Future | None = None
            for images, ratio in batches:
                nxt = pool.submit(self.infer, images, ratio)
                if pending is not None:
                    yield pending.result()
                pending = nxt
            if pending is not None:
                yield pending.result()

    def _take_sidecar(self, sc: Sidecar) -> None:
        """Set the model attributes a file backend reads from its sidecar, one list for all of them.

        ``max_batch`` is left to the caller (an engine's may be capped below its profile).
        """
        self.tile = sc.tile
        self.n_classes = sc.n_classes
        self.class_names = tuple(sc.class_names)
        self.normalization = dict(sc.normalization)
        self.pixel_size_m = sc.pixel_size_m
        self.trained_on = sc.trained_on
        self.precision = sc.precision
        self.tile_sizes = sc.tile_sizes() if sc.tile_multiple is not None else None
        self.halo = sc.halo

    def allowed_tiles(self) -> Sequence[int]:
        """Tile sides ``infer`` can take (ascending): the fixed tile, or a fully convolutional graph's range."""
        return self.tile_sizes if self.tile_sizes is not None else (self.tile,)

    def use_tile(self, tile: int) -> None:
        """Make ``infer`` take ``tile`` x ``tile`` tiles from now on; refuses a size the model does not take."""
        sizes = self.allowed_tiles()
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or int(tile) not in sizes:
            if isinstance(sizes, range) and len(sizes) > 1:
                allowed = f"multiples of {sizes.step} from {sizes.start} to {sizes[-1]}"
            else:
                allowed = "only " + ", ".join(map(str, sizes))
            raise ValueError(f"tile {tile!r} is not a size the {self.name} model takes: {allowed}")
        self.tile = int(tile)

    def check_batch(self, images: np.ndarray, ratio: np.ndarray) -> None:
        """Shape checks shared by all backends (cheap; catches wiring errors early)."""
        t = self.tile
        if images.ndim != 4 or images.shape[1:] != (1, t, t):
            raise ValueError(f"images must be [B, 1, {t}, {t}], got {list(images.shape)}")
        b = images.shape[0]
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"batch size {b} outside [1, {self.max_batch}] for backend {self.name}")
        if ratio.shape != (b, self.n_classes):
            raise ValueError(f"ratio must be [{b}, {self.n_classes}], got {list(ratio.shape)}")

    def close(self) -> None:
        """Release sessions / device memory. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What runs, for logs and benchmark reports."""
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "tile": self.tile,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "max_batch": self.max_batch,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} tile={self.tile} n={self.n_classes} on {self.device}>"
