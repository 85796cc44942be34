"""``pancreas predict``: CT files in, label maps on the original scan grid out.

Layers (nnU-Net style): ``predict_volume`` (stored-grid levels in, probabilities out: pure
numpy around a model callable), ``predict_case`` (one file: read, the run's own
preprocessing, sliding window, post-processing, back to the scan grid, atomic write) and
``predict_cases`` (inputs discovered, resumable, one bad case never stops the others).

Each CT goes through ``preprocess.pipeline.preprocess_image`` with the preprocessing
config recorded in the run's ``input_contract.json``: the very code path of
``pancreas preprocess``, so training and inference cannot disagree.

Back to the scan grid: the *label map* is resampled with nearest neighbour
(``preprocess.geometry.restore_to_original``), not the probabilities linearly. Reasons:
one uint8 resample instead of C float32 ones (at 512x512x100 that is about 0.15 s and
26 MB instead of about 1 s and 300 MB per class, which would break both the memory bound
and the "everything but the model under 15%" goal); the stored grid (1 mm) is finer than or
about as fine as the scan's slices, so nearest neighbour moves a boundary by at most half
a stored voxel (0.5 mm), below annotation uncertainty; and it is the one path the store
contract already round-trips and tests. Optional probability maps use linear resampling.

TensorFlow is imported only in ``load_predict_fn``, so discovery, evaluation and the
tests with a fake model start without it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from dataset.common.configio import from_dict, to_dict
from dataset.common.files import fingerprint_file, fingerprint_json, write_json_atomic
from dataset.common.msd import case_id_of, is_image_name, load_msd_dataset
from dataset.contract.store import levels_to_intensity
from inference.config import PredictConfig
from inference.sliding import Stitcher, batches, extract_windows, mirror_combinations, pad_to_window, window_grid

log = logging.getLogger(__name__)

PredictFn = Callable[..., np.ndarray]  # (N, z, y, x, 1) float32 -> (N, z, y, x, C)
CONTRACT_NAME = "input_contract.json"
CONTRACT_KEYS = ("val_patch_size_zyx", "n_classes", "model_depth", "preprocess")
MANIFEST_NAME = "predictions.json"
ARGMAX_SLAB_Z = 16  # z-slices per argmax step: bounds the temporaries


class PredictError(ValueError):
    """An input, run or setting that prediction cannot use; the message names it."""


@dataclass(frozen=True)
class CaseInput:
    case_id: str
    path: Path


@dataclass
class CaseResult:
    case_id: str
    source: str
    output: str | None = None
    error: str | None = None
    skipped: bool = False
    shape_zyx: tuple[int, ...] | None = None
    n_windows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictSummary:
    out_dir: Path
    results: list[CaseResult]
    seconds: float

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.error]

    @property
    def n_done(self) -> int:
        return sum(1 for r in self.results if not r.error and not r.skipped)

    @property
    def n_skipped(self) -> int:
        return sum(1 for r in self.results if r.skipped)

    def table(self) -> str:
        """Readable per-case summary for the terminal."""
        head = f"{'case':<24} {'status':<8} {'stored z,y,x':<16} {'windows':>7} {'prep s':>7} {'model s':>8} {'stitch s':>8} {'export s':>8}"
        lines = [head, "-" * len(head)]
        for r in self.results:
            status = "failed" if r.error else "skipped" if r.skipped else "done"
            shape = "x".join(map(str, r.shape_zyx)) if r.shape_zyx else "-"
            s = r.seconds
            lines.append(
                f"{r.case_id:<24} {status:<8} {shape:<16} {r.n_windows:>7} {s.get('preprocess', 0):>7.2f} "
                f"{s.get('model', 0):>8.2f} {s.get('stitch', 0):>8.2f} {s.get('export', 0):>8.2f}"
            )
            if r.error:
                lines.append(f"    error: {r.error}")
        lines.append(
            f"{self.n_done} predicted, {self.n_skipped} up to date, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s -> {self.out_dir}"
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs

def discover_inputs(path: str | Path) -> list[CaseInput]:
    """A NIfTI file, a folder of NIfTI files, an MSD task folder (its test cases) or a DICOM folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    if p.is_file():
        if not is_image_name(p.name):
            raise PredictError(f"{p}: not a NIfTI file (.nii or .nii.gz)")
        return [CaseInput(case_id_of(p), p)]
    if (p / "dataset.json").is_file():
        tests = [c for c in load_msd_dataset(p).cases if c.split == "test"]
        if not tests and (p / "imagesTs").is_dir():
            tests_dir = p / "imagesTs"
            return [CaseInput(case_id_of(q), q) for q in sorted(tests_dir.iterdir()) if is_image_name(q.name)]
        if not tests:
            raise PredictError(f"{p}: MSD folder lists no test cases and has no imagesTs/")
        return [CaseInput(c.case_id, c.image) for c in tests]
    niftis = sorted(q for q in p.iterdir() if q.is_file() and is_image_name(q.name))
    if niftis:
        return [CaseInput(case_id_of(q), q) for q in niftis]
    return [CaseInput(p.name, p)]  # a DICOM series folder; read_image says if it is not one


# ----------------------------------------------------------------------------- the run

def load_contract(run_dir: str | Path) -> dict:
    """The run's ``input_contract.json`` (what the model expects and how inputs were made)."""
    path = Path(run_dir) / CONTRACT_NAME
    if not path.is_file():
        raise PredictError(f"{run_dir}: no {CONTRACT_NAME}; not a finished `pancreas train` run folder")
    try:
        contract = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PredictError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in CONTRACT_KEYS if k not in contract]
    if missing:
        raise PredictError(f"{path}: missing key(s) {', '.join(missing)}")
    return contract


def resolve_config(config: PredictConfig, contract: dict) -> PredictConfig:
    """Fill the window from the contract and check the model can take it."""
    window = tuple(int(w) for w in (config.window_zyx or contract["val_patch_size_zyx"]))
    factor = 2 ** int(contract["model_depth"])
    if len(window) != 3 or any(w < factor or w % factor for w in window):
        raise PredictError(
            f"window {window} does not fit a U-Net of depth {contract['model_depth']}: "
            f"every edge must be a positive multiple of {factor}"
        )
    return dataclasses.replace(config, window_zyx=window)


def checkpoint_path(run_dir: str | Path, checkpoint: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{checkpoint}.keras"


def load_predict_fn(run_dir: str | Path, checkpoint: str = "best") -> PredictFn:
    """Load the Keras model (lazily importing TensorFlow) and wrap it as a numpy callable."""
    path = checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise PredictError(f"{run_dir}: no checkpoint {path.name} in checkpoints/")
    import keras  # noqa: PLC0415 - lazy: only prediction with a real model pays for TensorFlow

    for module in ("training.losses", "training.metrics"):  # register the custom objects
        try:
            __import__(module)
        except ImportError:  # loading with compile=False does not need them
            log.debug("could not import %s", module)
    model = keras.saving.load_model(path, compile=False)

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch), dtype=np.float32)

    return predict_fn


# ----------------------------------------------------------------------------- one volume

def _predict_batch(x: np.ndarray, starts: list, predict_fn: PredictFn, flips: list, positional: bool) -> np.ndarray:
    """Mean model output over the mirror combinations, flipped back."""
    total = None
    for axes in flips:
        spatial = tuple(a + 1 for a in axes)
        xin = np.ascontiguousarray(np.flip(x, spatial)) if axes else x
        y = predict_fn(xin, starts) if positional else predict_fn(xin)
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 5 or y.shape[:4] != x.shape[:4]:
            raise PredictError(f"model returned shape {y.shape} for input {x.shape}; expected (N, z, y, x, C)")
        if axes:
            y = np.flip(y, spatial)
        total = np.array(y, dtype=np.float32) if total is None else total + y
    if len(flips) > 1:
        total /= len(flips)
    return total


def predict_volume(
    levels_zyx: np.ndarray,
    predict_fn: PredictFn,
    config: PredictConfig,
    *,
    positional: bool = False,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Class probabilities (C, z, y, x) float32 for a stored-grid uint8 volume.

    ``predict_fn(batch)`` maps (N, z, y, x, 1) float32 intensities to (N, z, y, x, C);
    with ``positional=True`` it is called as ``predict_fn(batch, starts_zyx)`` (tests use
    this to return known answers per window). A volume smaller than the window is padded at
    the end (level 0) and the result cropped back. ``timings`` receives seconds spent in
    the model ("model") and everything else ("stitch").
    """
    if config.window_zyx is None:
        raise PredictError("config.window_zyx is None: resolve it from the run's contract first")
    if levels_zyx.ndim != 3:
        raise PredictError(f"expected a 3D (z, y, x) volume, got shape {levels_zyx.shape}")
    t_start = time.perf_counter()
    window = tuple(config.window_zyx)
    padded, shape = pad_to_window(levels_zyx, window, 0)
    grid = window_grid(padded.shape, window, config.overlap)
    flips = mirror_combinations(config.mirror_axes)
    stitcher: Stitcher | None = None
    model_seconds = 0.0
    with tqdm(total=len(grid), desc="windows", unit="win", leave=False, disable=not progress) as bar:
        for starts in batches(grid, config.batch_size):
            x = levels_to_intensity(extract_windows(padded, starts, window))[..., None]
            t = time.perf_counter()
            probs = _predict_batch(x, starts, predict_fn, flips, positional)
            model_seconds += time.perf_counter() - t
            if stitcher is None:
                stitcher = Stitcher(probs.shape[-1], padded.shape, window, config.gaussian_sigma_scale)
            for p, start in zip(probs, starts):
                stitcher.add(np.moveaxis(p, -1, 0), start)
            bar.update(len(starts))
    assert stitcher is not None  # the grid always has at least one window
    result = stitcher.result()[:, : shape[0], : shape[1], : shape[2]]
    if timings is not None:
        timings["model"] = model_seconds
        timings["stitch"] = time.perf_counter() - t_start - model_seconds
        timings["windows"] = len(grid) * len(flips)
    return result


def argmax_labels(probs_czyx: np.ndarray) -> np.ndarray:
    """uint8 argmax over classes (ties go to the lower class, as np.argmax).

    Running comparisons over z-slabs instead of ``np.argmax(axis=0)``: with the class axis
    outermost numpy's argmax is about 1.7x slower (1.16 s vs 0.67 s for 3 x 30 M voxels),
    and the slabs keep the temporaries small.
    """
    out = np.zeros(probs_czyx.shape[1:], dtype=np.uint8)
    for z in range(0, out.shape[0], ARGMAX_SLAB_Z):
        slab = probs_czyx[:, z : z + ARGMAX_SLAB_Z]
        best = slab[0].copy()
        labels = out[z : z + ARGMAX_SLAB_Z]
        for c in range(1, slab.shape[0]):
            better = slab[c] > best
            labels[better] = c
            np.maximum(best, slab[c], out=best)
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(labels: np.ndarray, mode: str) -> np.ndarray:
    """Remove all but the largest 26-connected component ("foreground": of all non-zero
    labels together, so a tumour touching the gland survives; "per_class": of each label)."""
    if mode == "off":
        return labels
    out = labels.copy()
    if mode == "foreground":
        mask = labels > 0
        out[mask & ~_largest(mask)] = 0
    elif mode == "per_class":
        for value in np.unique(labels):
            if value:
                mask = labels == value
                out[mask & ~_largest(mask)] = 0
    else:
        raise PredictError(f"unknown largest_component mode {mode!r}")
    return out


# ----------------------------------------------------------------------------- one case

def predict_case(
    case: CaseInput,
    predict_fn: PredictFn,
    config: PredictConfig,
    preprocess_config,
    out_dir: Path,
    *,
    n_classes: int | None = None,
    positional: bool = False,
    progress: bool = True,
) -> CaseResult:
    """Predict one CT and write ``out_dir/<case>.nii.gz`` (uint8, the scan's exact grid)."""
    from preprocess.io import compose, copy_geometry, write_image_atomic
    from preprocess.geometry import restore_to_original
    from preprocess.io import grid_mismatch, read_image
    from preprocess.pipeline import preprocess_image

    result = CaseResult(case.case_id, str(case.path))
    t = time.perf_counter()
    image, _dtype = read_image(case.path)
    pre = preprocess_image(image, None, preprocess_config)
    result.shape_zyx = tuple(int(s) for s in pre.levels.shape)
    result.seconds["preprocess"] = time.perf_counter() - t

    timings: dict[str, float] = {}
    probs = predict_volume(pre.levels, predict_fn, config, positional=positional, progress=progress, timings=timings)
    if n_classes is not None and probs.shape[0] != n_classes:
        raise PredictError(f"model gives {probs.shape[0]} classes, the run's contract says {n_classes}")
    result.n_windows = int(timings["windows"])
    result.seconds["model"], result.seconds["stitch"] = timings["model"], timings["stitch"]

    t = time.perf_counter()
    labels = keep_largest_component(argmax_labels(probs), config.largest_component)
    restored = restore_to_original(labels, pre.attrs, "nearest", 0)
    mismatch = grid_mismatch(image, restored)
    if mismatch:
        raise PredictError(f"restored label map is not on the scan's grid: {mismatch}")
    out_path = out_dir / f"{case.case_id}.nii.gz"
    write_image_atomic(copy_geometry(restored, image), out_path)
    if config.save_probabilities:
        channels = [
            copy_geometry(restore_to_original(np.ascontiguousarray(probs[c]), pre.attrs, "linear", 1.0 if c == 0 else 0.0), image)
            for c in range(probs.shape[0])
        ]
        write_image_atomic(compose(channels), out_dir / f"{case.case_id}_probabilities.nii.gz")
    result.output = str(out_path)
    result.seconds["export"] = time.perf_counter() - t
    return result


# ----------------------------------------------------------------------------- many cases

def _load_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if isinstance(data.get("cases"), dict):
                return data
        except (json.JSONDecodeError, AttributeError):
            log.warning("%s unreadable; predicting every case again", path)
    return {"cases": {}}


def _input_fingerprint(path: Path) -> str | None:
    try:
        return fingerprint_file(path)
    except OSError:
        return None


def predict_cases(
    run_dir: str | Path,
    inputs: str | Path | Sequence[CaseInput],
    out_dir: str | Path,
    config: PredictConfig = PredictConfig(),
    *,
    predict_fn: PredictFn | None = None,
    positional: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Predict every input case into ``out_dir``; resumable, failures reported per case.

    ``predict_fn`` replaces the run's Keras checkpoint (tests, other backends). Up-to-date
    outputs (same input fingerprint, model, contract and config, recorded in
    ``out_dir/predictions.json``) are skipped unless ``overwrite``.
    """
    from dataset.common.files import remove_stale_temporaries
    from preprocess.config import PreprocessConfig, config_fingerprint

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir)
    contract = load_contract(run_dir)
    preprocess_config = from_dict(PreprocessConfig, contract["preprocess"], where=f"{run_dir / CONTRACT_NAME}: preprocess")
    recorded = contract.get("preprocess_fingerprint")
    if recorded and recorded != config_fingerprint(preprocess_config):
        log.warning("%s: preprocessing fingerprint %s differs from this code's reading of the same config (%s); "
                    "the preprocessing code may have changed since training", run_dir, recorded,
                    config_fingerprint(preprocess_config))
    config = resolve_config(config, contract)
    cases = list(inputs) if not isinstance(inputs, (str, Path)) else discover_inputs(inputs)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PredictError(f"several inputs share the case name(s) {', '.join(duplicates)}; outputs would collide")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)

    if predict_fn is None:
        ckpt = checkpoint_path(run_dir, config.checkpoint)
        model_fp = fingerprint_file(ckpt) if ckpt.is_file() else "missing"
    else:
        model_fp = "custom:" + getattr(predict_fn, "__qualname__", type(predict_fn).__name__)
    settings_fp = fingerprint_json({"contract": contract, "config": to_dict(config), "model": model_fp})
    manifest = _load_manifest(out)
    manifest.update(run=str(run_dir.resolve()), settings_fingerprint=settings_fp, config=to_dict(config))

    def up_to_date(case: CaseInput) -> bool:
        prev = manifest["cases"].get(case.case_id) or {}
        return (not overwrite and prev.get("status") == "done"
                and prev.get("input_fingerprint") == _input_fingerprint(case.path)
                and prev.get("settings_fingerprint") == settings_fp
                and (out / f"{case.case_id}.nii.gz").is_file())

    done_before = {c.case_id for c in cases if up_to_date(c)}
    if predict_fn is None and len(done_before) < len(cases):
        predict_fn = load_predict_fn(run_dir, config.checkpoint)  # a missing model stops the run

    results: list[CaseResult] = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        if case.case_id in done_before:
            results.append(CaseResult(case.case_id, str(case.path), str(out / f"{case.case_id}.nii.gz"), skipped=True))
            continue
        input_fp = _input_fingerprint(case.path)
        try:
            result = predict_case(case, predict_fn, config, preprocess_config, out,
                                  n_classes=int(contract["n_classes"]), positional=positional, progress=progress)
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
            log.debug("case %s failed", case.case_id, exc_info=True)
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            if str(case.path) not in text:
                text = f"{case.path}: {text}"
            result = CaseResult(case.case_id, str(case.path), error=text)
        if result.error:
            log.error("case %s failed: %s", case.case_id, result.error)
        results.append(result)
        manifest["cases"][case.case_id] = {
            "input": str(case.path), "input_fingerprint": input_fp, "settings_fingerprint": settings_fp,
            "status": "failed" if result.error else "done", "error": result.error, "output": result.output,
            "shape_zyx": list(result.shape_zyx) if result.shape_zyx else None,
            "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        }
        write_json_atomic(out / MANIFEST_NAME, manifest)
    return PredictSummary(out, results, time.perf_counter() - t0)
