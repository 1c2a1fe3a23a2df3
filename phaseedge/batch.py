"""``phaseedge batch``: reprocess an archive of frames into per-frame files and one fractions table.

Every frame under INPUT_DIR (recursively; the output mirrors its subfolders) gets the files
``phaseedge segment`` writes for it (the same code: `phaseedge.cli.segment_frame`) plus
``NAME_fractions.csv``, its row of the table, written last: a frame whose files all exist,
for the same model, is complete and skipped when the run is started again (resumable).
A file that cannot be read or segmented is a row in ``errors.csv`` and the run goes on.
At the end ``fractions.csv`` collects the rows of every complete frame, in path order.

Serial by default (one Segmenter). ``ray=True`` runs a Ray Data pipeline: the list of
pending frames -> ``map`` (read each file) -> ``map_batches`` with `RayFrameWriter`, an
actor class holding one Segmenter, in an ``ActorPoolStrategy`` pool of ``workers`` actors
(each with ``gpus_per_worker`` GPUs) -> the rows back here -> the tables. Ray is imported
only then; on a local instance, or on a cluster (``ray_address``) whose workers have
phaseedge installed and see INPUT_DIR and OUT at the same paths.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})
FRACTIONS_CSV = "fractions.csv"
ERRORS_CSV = "errors.csv"
#: written last for a frame: its presence (with the other files) marks the frame complete
FRAME_CSV_SUFFIX = "_fractions.csv"


@dataclass(frozen=True)
class Job:
    """One frame: where it is read from and where its files go."""

    path: str
    out: str  # the output folder for this frame (mirrors the input subfolder)
    stem: str  # output name, unique within ``out``


@dataclass(frozen=True)
class Settings:
    """How every frame is segmented and what is written: the ``phaseedge segment`` options.
    Plain values, so Ray can ship them to its actors."""

    model: str = "default"
    backend: str = "auto"
    device: int = 0
    overlap: float | None = None  # None (and blend, tile, halo): the model's tiling (phaseedge.tiling.plan)
    blend: str | None = None
    tile: int | None = None
    halo: int | None = None
    batch_size: int | None = None
    ratio_mode: str = "global"
    ratio: Any = None  # as ``phaseedge segment --ratio`` parses it (checked against the model's classes)
    tta: bool | str | None = False
    scales: tuple[float, ...] | None = None  # multi-scale inference (Segmenter scales)
    crop: tuple[int, int] | None = None
    keep_band: bool = False
    overlay: bool = False
    uncertainty: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)

    def segmenter(self) -> Any:
        """A Segmenter for these settings (cheap: the model loads on first use)."""
        from phaseedge.segmenter import Segmenter

        return Segmenter(self.model, backend=self.backend, device=self.device, overlap=self.overlap,
                         blend=self.blend, tile=self.tile, halo=self.halo, batch_size=self.batch_size,
                         ratio_mode=self.ratio_mode, tta=self.tta, scales=self.scales,
                         backend_options=dict(self.backend_options))

    def outputs(self, job: Job) -> list[Path]:
        """Every file a complete frame has."""
        out, stem = Path(job.out), job.stem
        files = [f"{stem}_labels.png", f"{stem}_labels.tif", f"{stem}.json"]
        files += [f"{stem}_overlay.png"] if self.overlay else []
        files += [f"{stem}_uncertainty.tif"] if self.uncertainty else []
        return [out / f for f in files] + [out / f"{stem}{FRAME_CSV_SUFFIX}"]


@dataclass(frozen=True)
class Report:
    """What a run did."""

    frames: int
    skipped: int  # complete from an earlier run
    segmented: int
    failed: int
    fractions_csv: Path
    errors_csv: Path


def find_frames(input_dir: str | Path, out: str | Path) -> list[Job]:
    """Every image file under ``input_dir`` in path order, with its output folder and name."""
    from phaseedge.cli import _unique_stems

    root, dest = Path(input_dir), Path(out)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and dest.resolve() not in p.resolve().parents)
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, []).append(p)
    jobs = []
    for folder, files in by_folder.items():
        where = dest / folder.relative_to(root)
        jobs += [Job(str(p), str(where), stem) for p, stem in zip(files, _unique_stems(files))]
    return sorted(jobs, key=lambda j: j.path)


def _frame_row(settings: Settings, job: Job) -> dict[str, str] | None:
    """The frame's fractions row when all its files exist for this very image; else None."""
    if not all(p.is_file() for p in settings.outputs(job)):
        return None
    try:
        with open(Path(job.out) / f"{job.stem}{FRAME_CSV_SUFFIX}", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if len(rows) != 1 or rows[0].get("image") != job.path or rows[0].get("error"):
        return None
    return rows[0]


def is_complete(settings: Settings, job: Job, model: str) -> bool:
    """All files there, for this image and this model (a new model reprocesses the frame)."""
    row = _frame_row(settings, job)
    return row is not None and row.get("model") == model


class FrameWriter:
    """One Segmenter; segments frames and writes their files, a failure becoming an error row."""

    def __init__(self, settings: Settings) -> None:
        from phaseedge import ratio as ratio_mod

        self.settings = settings
        self.seg = settings.segmenter()
        self.seg.__enter__()  # load now: a model that does not load fails the run, not every frame
        self.ratio = ratio_mod.check(settings.ratio, self.seg.n_classes, self.seg.class_names)

    def read(self, job: Job) -> Any:
        from phaseedge.io import read_image

        return read_image(job.path, self.settings.crop, not self.settings.keep_band)

    def write(self, job: Job, frame: Any = None, error: str = "") -> dict[str, Any]:
        """Segment ``frame`` (read here when None) and write its files; returns its row."""
        from phaseedge.cli import segment_frame, write_fractions_csv

        s = self.settings
        row: dict[str, Any] = {"image": job.path, "error": error}
        if error:
            return row
        try:
            out = Path(job.out)
            out.mkdir(parents=True, exist_ok=True)
            frame = self.read(job) if frame is None else frame
            row.update(segment_frame(self.seg, frame, out, job.stem, self.ratio, uncertainty=s.uncertainty,
                                     overlay=s.overlay))
            row.update(model=str(self.seg.model), ratio_mode=s.ratio_mode)
            write_fractions_csv(out / f"{job.stem}{FRAME_CSV_SUFFIX}", [row], self.seg.class_names,
                                str(self.seg.model), s.ratio_mode)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the archive
            row["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
        return row

    def close(self) -> None:
        self.seg.close()


def _read_for_ray(item: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Ray Data ``map``: one file's pixels and metadata, or the reason it cannot be read."""
    from phaseedge.io import read_image

    row = {"path": item["path"], "out": item["out"], "stem": item["stem"], "error": "",
           "pixels": np.zeros((0, 0), np.uint8), "pixel_size_m": math.nan, "band_rows": 0, "bits": 0}
    try:
        frame = read_image(item["path"], settings.crop, not settings.keep_band)
        row.update(pixels=np.array(frame.pixels), band_rows=frame.band_rows, bits=frame.bits,
                   pixel_size_m=math.nan if frame.pixel_size_m is None else frame.pixel_size_m)
    except Exception as exc:  # noqa: BLE001 - recorded in errors.csv by the actor
        row["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
    return row


class RayFrameWriter:
    """Ray Data ``map_batches`` actor: one Segmenter per actor (per GPU or CPU slot)."""

    def __init__(self, settings: Settings) -> None:
        self.writer = FrameWriter(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        from phaseedge.io import Frame

        rows = []
        for k in range(len(batch["path"])):
            job = Job(str(batch["path"][k]), str(batch["out"][k]), str(batch["stem"][k]))
            error = str(batch["error"][k])
            frame = None
            if not error:
                size = float(batch["pixel_size_m"][k])
                frame = Frame(pixels=np.asarray(batch["pixels"][k]), path=Path(job.path),
                              pixel_size_m=None if math.isnan(size) else size,
                              band_rows=int(batch["band_rows"][k]), bits=int(batch["bits"][k]))
            rows.append(json.dumps(self.writer.write(job, frame, error)))  # one string column: no schema to infer
        return {"row": rows}


def _run_ray(jobs: list[Job], settings: Settings, address: str | None, workers: int,
             gpus_per_worker: float) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("--ray needs Ray Data: pip install 'phaseedge[ray]'") from exc

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    try:
        items = [{"path": j.path, "out": j.out, "stem": j.stem} for j in jobs]
        ds = (ray.data.from_items(items)
              .map(_read_for_ray, fn_kwargs={"settings": settings})
              .map_batches(RayFrameWriter, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                           compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker or None))
        return [json.loads(r["row"]) for r in ds.take_all()]
    except ray.exceptions.RayError as exc:  # e.g. the model does not load in an actor
        raise RuntimeError(f"the Ray pipeline failed: {(str(exc).strip().splitlines() or ['?'])[-1]}") from exc
    finally:
        if started:
            ray.shutdown()


def run_batch(input_dir: str | Path, out: str | Path, settings: Settings, ray: bool = False,
              ray_address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0) -> Report:
    """Segment every pending frame under ``input_dir`` into ``out``; write fractions.csv and errors.csv."""
    from phaseedge.cli import write_fractions_csv
    from phaseedge.outputs import atomic_write

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    dest = Path(out)
    jobs = find_frames(input_dir, dest)
    probe = settings.segmenter()  # not loaded: only its model id is needed here
    model = str(probe.model)
    probe.close()
    pending = [j for j in jobs if not is_complete(settings, j, model)]
    dest.mkdir(parents=True, exist_ok=True)
    if not pending:
        rows = []
    elif ray:
        rows = _run_ray(pending, settings, ray_address, workers, gpus_per_worker)
    else:
        writer = FrameWriter(settings)
        try:
            rows = [writer.write(j) for j in pending]
        finally:
            writer.close()
    errors = sorted((r for r in rows if r["error"]), key=lambda r: r["image"])
    done = [(j, row) for j in jobs if (row := _frame_row(settings, j)) is not None and row.get("model") == model]
    # class names from a frame's JSON: the model itself is not loaded here (a Ray driver may have no GPU)
    names = tuple(json.loads((Path(done[0][0].out) / f"{done[0][0].stem}.json").read_text())["class_names"]) \
        if done else ()
    fractions_csv, errors_csv = dest / FRACTIONS_CSV, dest / ERRORS_CSV
    write_fractions_csv(fractions_csv, [row for _, row in done], names, model, settings.ratio_mode)
    buf = ["image,error\n"]
    for r in errors:
        buf.append(_csv_line([r["image"], r["error"]]))
    atomic_write(errors_csv, "".join(buf).encode("utf-8"))
    return Report(frames=len(jobs), skipped=len(jobs) - len(pending), segmented=len(rows) - len(errors),
                  failed=len(errors), fractions_csv=fractions_csv, errors_csv=errors_csv)


def _csv_line(values: list[str]) -> str:
    import io

    buf = io.StringIO(newline="")
    csv.writer(buf).writerow(values)
    return buf.getvalue()
