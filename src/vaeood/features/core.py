"""Features: per-image computations of a model (or of the image alone), computed in
batches and cached in the run directory.

Vocabulary (one meaning each): an *estimator* (``vaeood.inference.estimators``) estimates log p(x);
a *feature* is any per-image number a detector may use (the estimate of log p(x) is the
``log_px`` feature, beside rate, distortion, posterior norms, reconstruction error,
compressed bits, ...); a *detector score* (``vaeood.detectors``) is what a detector
makes of features, higher = more out-of-distribution.

A feature producer is a function registered in :data:`FEATURES`::

    @FEATURES.register("name")
    def name(model, x, *, generator=None, **options) -> dict[str, torch.Tensor]:  # each [B]
        ...
    name.needs_grad = True    # optional: run without torch.no_grad() (the producer owns its graph)
    name.uses_model = False   # optional: depends on the image only (e.g. compression)

``x`` is a uint8 tensor ``[B, C, H, W]`` and ``model`` follows the duck-typed protocol of
:mod:`vaeood.inference.estimators` (see :mod:`vaeood.byo` for bringing your own VAE). Output keys
carry their unit (``log_px_nats``, ``png_bits``, ...).

Seeding rule: an image's features depend on the image's bytes, the seed and the options
alone — never on its place in the slice, the batch size, the other images, the number of
processes or the device. ``generator`` is a :class:`vaeood.inference.noise.ImageNoise` made for the
batch from ``seed``: each image draws its noise from its own streams, keyed on
(seed, its bytes), through :func:`vaeood.inference.gaussian.standard_normal` and the hierarchical
VAE's ``draw_noise`` (likelihood regret keys its own blocks on the same seed). Every
feature of an image shares one key, so features of one image see common random numbers
(``llr``'s ``elbo_nats`` is ``log_px`` by ``iwae`` with as many samples); identical images
get identical features. A producer that draws noise must draw it from ``generator``.

Cache: :mod:`vaeood.features.cache` (the key, shared folders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from ..infra import distributed
from ..infra.atomic import atomic_write
from ..infra.runlock import holds_run_lock
from ..training.config import ConfigError
from ..data import load_dataset
from ..data.folder_cache import release
from ..data.load import load_for_run
from ..data.conform import CONFORMS, conform_images, shape_text
from ..inference.noise import ImageNoise
from ..inference.passes import shared_passes
from ..infra.progress import bar
from ..infra.registry import Registry, check_options
from ..training.run import load_model, to_tensor
from ..training.run_dir import CONFIG_NAME, Run
from .cache import FEATURES_DIR, FORMAT, cache_path, cache_tag, cached_features, conform_keyed

log = logging.getLogger(__name__)

FEATURES: Registry = Registry("feature")

SUPPLIED = ("model", "x", "generator")
RESERVED = ("feature", "run")  # keys of a need that are not options of the producer
class ShapeMismatchError(ValueError):
    """The images to score do not have the shape the model was trained on."""


def _check_model_shape(model, images) -> None:
    """Refuse images whose C×H×W (numpy ``[N, H, W, C]``, tensor ``[N, C, H, W]``) is not the
    model's ``image_shape``, naming both and the fix: an array in the other layout is never
    read as this one (a dense model would take its pixels in another order without a word)."""
    want = tuple(getattr(model, "image_shape", None) or ())
    given = tuple(images.shape)
    is_tensor = isinstance(images, torch.Tensor)
    have = given[1:] if is_tensor else (given[3], given[1], given[2])
    if not want or have == want:
        return
    if not is_tensor and given[1:] == want:
        fix = "it is channels-first (N×C×H×W), but numpy images are N×H×W×C: pass images.transpose(0, 2, 3, 1)"
    elif is_tensor and (given[3], given[1], given[2]) == want:
        fix = "it is channels-last (N×H×W×C), but tensors are N×C×H×W: pass images.permute(0, 3, 1, 2)"
    else:
        fix = ("bring the images to the model's size first, e.g. vaeood.data.conform.conform_images(images, "
               "model.image_shape, 'pad' or 'resize')")
    raise ShapeMismatchError(f"images of shape {given} ({'a tensor' if is_tensor else 'numpy'}) are C×H×W = "
                             f"{shape_text(have)}, but the model takes {shape_text(want)}; {fix}")


# -- requests ------------------------------------------------------------------------------
def normalise_needs(needs: Mapping[str, dict] | Iterable[str] | str) -> dict[str, dict]:
    """``"log_px"`` / ``["log_px", "posterior"]`` / ``{"log_px": {...}}`` → ``{key: options}``.

    A need's key is the feature's name, or an alias when the options carry
    ``"feature": name`` (and optionally ``"run": other_run_dir`` to compute it with
    another run's model). An aliased need's outputs are returned as ``"alias/output"``.
    """
    if isinstance(needs, str):
        needs = [needs]
    if not isinstance(needs, Mapping):
        needs = {name: {} for name in needs}
    out = {}
    for key, options in needs.items():
        options = dict(options or {})
        name = options.get("feature", key)
        fn = FEATURES.get(name)
        check_options(fn, {k: v for k, v in options.items() if k not in RESERVED}, "feature", name, SUPPLIED)
        out[key] = options
    return out


def canonical_options(fn, options: dict) -> dict:
    """The options with the producer's defaults filled in (``None`` for an ``*_options``
    dict reads as ``{}``), so that equal requests share one cache key."""
    import inspect

    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in SUPPLIED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = options.get(p.name, p.default if p.default is not p.empty else None)
        if value is None and p.name.endswith("_options"):
            value = {}
        out[p.name] = value
    return out


def split_need(key: str, options: dict) -> tuple[str, dict, str | None, str]:
    """(feature name, producer options, other run or None, output prefix)."""
    name = options.get("feature", key)
    run = options.get("run")
    producer = {k: v for k, v in options.items() if k not in RESERVED}
    prefix = "" if (key == name and run is None) else f"{key}/"
    return name, producer, (str(run) if run is not None else None), prefix


# -- computing -----------------------------------------------------------------------------
def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def features_of(model, images: np.ndarray | torch.Tensor, name: str, options: dict | None = None, *,
                seed: int = 0, batch_size: int | None = None, progress: bool | None = None,
                desc: str = "") -> dict[str, np.ndarray]:
    """Feature ``name`` of every image, uncached: ``{output: float64 [N]}``.

    ``images``: uint8 numpy ``[N, H, W, C]`` (as datasets load; ``[N, H, W]`` for grey) or a uint8 tensor
    ``[N, C, H, W]``. Batches of ``batch_size`` (default :func:`default_batch_size`), a memory bound only; each
    image draws its noise from an :class:`vaeood.inference.noise.ImageNoise` keyed on its bytes and
    ``seed`` (the seeding rule of the module docstring), so an image's values do not depend
    on its position or the batch size. Under torchrun batch ``b`` runs on rank ``b mod W``.
    """
    return features_of_needs([(model, name, options)], images, seed=seed, batch_size=batch_size, progress=progress,
                             desc=desc or name)[0]


def features_of_needs(jobs, images: np.ndarray | torch.Tensor, *, seed: int = 0, batch_size: int | None = None,
                      progress: bool | None = None, desc: str = "features") -> list[dict[str, np.ndarray]]:
    """:func:`features_of` for several ``(model, feature name, options)`` jobs at once, batch by
    batch: every job reads the same batch tensor, inside one
    :func:`vaeood.inference.passes.shared_passes` block, so that a model's encoder runs once a
    batch for all of them. Each job's noise is drawn as :func:`features_of` draws it alone
    (a new :class:`~vaeood.inference.noise.ImageNoise` per job), so its values are the same."""
    checked = []
    for model, name, options in jobs:
        fn = FEATURES.get(name)
        checked.append((model, fn, check_options(fn, options or {}, "feature", name, SUPPLIED)))
    images, batch_of = _batches(images, model_device(jobs[0][0]))
    for model, fn, _ in checked:
        if getattr(fn, "uses_model", True):
            _check_model_shape(model, images)
    height, width = images.shape[2:] if isinstance(images, torch.Tensor) else images.shape[1:3]
    n, batch_size = len(images), int(batch_size or default_batch_size(height, width))
    rank, world = distributed.rank(), distributed.world_size()
    starts = range(0, n, batch_size)
    mine: dict[int, list[dict[str, np.ndarray]]] = {}
    for b in bar(range(rank, len(starts), world), desc=desc, enabled=progress):
        x = batch_of(starts[b], starts[b] + batch_size)
        with shared_passes():
            mine[b] = [_run_producer(fn, model, x, seed, options) for model, fn, options in checked]
    batches = {b: r for part in distributed.gather_objects(mine) for b, r in part.items()} if world > 1 else mine
    if not batches:
        return [{} for _ in jobs]
    return [{k: np.concatenate([batches[b][j][k] for b in range(len(starts))]) for k in batches[0][j]}
            for j in range(len(jobs))]


def default_batch_size(height: int, width: int) -> int:
    """Images a batch: 1000, or fewer beyond about 2^20 pixels (256 at 64×64). A batch's largest
    tensors (the decoder's output) then stay tens of MB, which the allocator reuses; hundreds of MB
    were fresh pages each batch: a fifth of a 64×64 ``detect``'s CPU time (BENCHMARKS.md)."""
    return max(1, min(1000, 2**20 // max(int(height) * int(width), 1)))


def _batches(images, dev: torch.device):
    """``(images, batch_of)``: a uint8 tensor ``[N, C, H, W]`` or numpy ``[N, H, W(, C)]`` (grey given a
    channel axis) and ``(start, stop) → uint8 [B, C, H, W]`` on ``dev``; anything else is refused."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        return images, lambda s, e: images[s:e].to(dev)
    images = np.asarray(images)
    if images.ndim == 3:  # grey [N, H, W]
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 numpy [N, H, W, C], got {images.dtype} {images.shape}")
    return images, lambda s, e: to_tensor(images[s:e], dev)


def _run_producer(fn, model, x: torch.Tensor, seed: int, options: dict) -> dict[str, np.ndarray]:
    """One producer on one batch, with its own noise (the seeding rule) and grad mode, on the
    model's device (a need's other model may live on another)."""
    dev = model_device(model)
    x = x if x.device == dev else x.to(dev)
    with torch.enable_grad() if getattr(fn, "needs_grad", False) else torch.no_grad():
        out = fn(model, x, generator=ImageNoise(x, seed), **options)
    return {k: v.detach().double().cpu().numpy() for k, v in out.items()}


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of ``repr((shape, dtype name))`` followed by the images' bytes (C order):
    the data part of a feature cache's key (``data_sha256``) and the digest of a
    calibration's images (``calibration_images_sha256``, :mod:`vaeood.decisions.calibration`)."""
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    for part in _parts(images):  # the same bytes in turn: a large (memory-mapped) array is never copied whole
        digest.update(np.ascontiguousarray(part).data)
    return digest.hexdigest()


def _parts(images: np.ndarray, rows: int = 2048):
    """``images`` ``rows`` at a time; a memory-mapped array's pages read are given back after each
    (:func:`vaeood.data.folder_cache.release`)."""
    for start in range(0, max(len(images), 1), rows):
        yield images[start: start + rows]
        release(images)


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Mean and variance of the pixel values on the [0, 1] scale (over all pixels and
    images): the study explains SVHN's high likelihood under a CIFAR-10 model by its
    similar mean and smaller variance. A memory-mapped array (a folder, :mod:`vaeood.data.folder_cache`)
    is summed in parts, exactly in integers (mean = Σv / 255n, variance = Σv² / 255²n − mean²)."""
    if not isinstance(images, np.memmap):
        x = images.astype(np.float64) / 255.0
        return {"pixel_mean": float(x.mean()), "pixel_var": float(x.var())}
    total = square = 0
    for part in _parts(images):
        values = part.astype(np.int64)
        total, square = total + int(values.sum()), square + int((values * values).sum())
    mean = total / (images.size * 255)
    return {"pixel_mean": mean, "pixel_var": square / (images.size * 255.0 ** 2) - mean ** 2}


def _slice(n: int, limit: int | None, start: int | None, stop: int | None) -> tuple[int, int]:
    for label, value in (("limit", limit), ("start", start), ("stop", stop)):
        if value is not None and (isinstance(value, bool) or int(value) != value):
            raise ConfigError(f"{label} must be an integer, got {value!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be ≥ 1 (or None for every image), got {limit}")
    begin = int(start or 0)
    if begin < 0:
        raise ConfigError(f"start must be ≥ 0, got {begin}")
    end = n if stop is None else int(stop)
    if limit is not None:
        end = min(end, begin + int(limit))
    end = min(end, n)
    if end <= begin:
        raise ConfigError(f"the slice [{begin}, {end}) of {n} images is empty")
    return begin, end


class Source:
    """A run directory's model, loaded once on first need (on this process's device under
    torchrun), and its checkpoint's SHA-256 (:class:`vaeood.training.run_dir.Run`)."""

    def __init__(self, run_dir: Path, device: str):
        self.run_dir, self.device = run_dir, device
        self.run = Run(run_dir)
        self._loaded = None

    @property
    def sha256(self) -> str:
        return self.run.checkpoint_sha256

    def load(self):
        if self._loaded is None:
            self._loaded = load_model(self.run_dir, str(distributed.setup(self.device)))
        return self._loaded


@holds_run_lock("features")  # it writes RUN/features
def compute_feature(run_dir: str | Path, dataset: str, split: str = "test", name: str = "log_px",
                    options: dict | None = None, *, data_dir: str | None = None, limit: int | None = None,
                    start: int | None = None, stop: int | None = None, batch_size: int | None = None,
                    device: str = "cpu", seed: int = 0, conform: str | None = None, allow_sample: bool = False,
                    reuse: bool = True, progress: bool | None = None, shared_cache: str | Path | None = None,
                    skip_bad: bool = False, _source: Source | None = None, _data=None) -> dict[str, np.ndarray]:
    """One feature of images ``[start, stop)`` (or the first ``limit``) of ``dataset/split``,
    cached in ``RUN/features/`` (or ``shared_cache``: :mod:`vaeood.features.cache`); returns its arrays
    ``[N]``, ``labels`` and ``meta`` (a JSON string; read it with :func:`feature_meta`).

    Images of another shape than the model's are refused (:class:`ShapeMismatchError`) unless
    ``conform`` (default: the run's recorded ``data.conform``) is ``"pad"`` or ``"resize"`` (recorded in
    ``meta["conform"]``) or the feature does not use the model (a backbone's, of images as they are)."""
    run_dir = Path(run_dir)
    fn = FEATURES.get(name)
    options = canonical_options(fn, check_options(fn, options or {}, "feature", name, SUPPLIED))
    if conform is not None:
        CONFORMS.get(conform)  # an unknown conform is refused before any work
    conform = Run(run_dir).conform_for(conform)  # the run's recorded transform by default
    source = _source or Source(run_dir, device)
    uses_model = getattr(fn, "uses_model", True)
    seed_key = seed if getattr(fn, "draws_noise", True) else None  # features.cache's docstring
    ckpt_sha = source.sha256  # a missing or unreadable checkpoint is reported before any data is read
    data = _data if _data is not None else run_dataset(run_dir, dataset, split, data_dir, allow_sample, conform,
                                                       skip_bad)
    begin, end = _slice(len(data.images), limit, start, stop)
    images = data.images[begin:end]
    key = {"format": FORMAT, "feature": name, "feature_options": options, "dataset": data.name,
           "split": data.split, "start": begin, "stop": end, "data_sha256": images_digest(images),
           "conform_method": conform, "seed": seed_key,
           "checkpoint_sha256": ckpt_sha if uses_model else None}
    conform_tag = conform if conform is None or uses_model else conform_keyed(key, conform, source.run.image_shape)
    # a folder is tagged by its own name and digest, not by the path it was given as (which may be long)
    tagged = f"{data.name}-{data.folder['sha256'][:12]}" if data.folder else dataset
    tag = cache_tag(tagged, split, name, options, begin, end, len(data.images), limit, conform_tag, seed_key)
    path = cache_path(run_dir, tag, key["data_sha256"], uses_model=uses_model, shared_cache=shared_cache)
    shared = path.parent != run_dir / FEATURES_DIR  # a shared file records no run's model
    saved = cached_features(path, key) if reuse and path.exists() else None
    if saved is not None:
        return saved

    model, config, ckpt = source.load()
    images, conformed = _conform_to_model(images, model, conform, data, run_dir, uses_model)
    started = time.perf_counter()
    result = features_of(model, images, name, options, seed=seed, batch_size=batch_size, progress=progress,
                         desc=f"{name} {data.name}/{split}")
    seconds = time.perf_counter() - started
    result["labels"] = data.labels[begin:end]
    info = {**key, "source": data.source, "files": data.provenance()["files"], "is_sample": data.is_sample,
            "limit": limit, "seconds": seconds, "n": end - begin, **pixel_stats(images), **({} if shared else {
                "checkpoint_epoch": ckpt["epoch"], "likelihood": config.model.likelihood,  # the run's model
                "normalised": bool(model.likelihood.normalised), "num_dims": model.num_dims})}
    if name == "log_px":  # the keys score() has always written
        info.update(estimator=options.get("estimator", "elbo"), options=options.get("estimator_options") or {})
    info["conform"] = conformed  # the conform applied (score metadata), or None
    result["meta"] = np.array(json.dumps(info))
    if distributed.is_main():
        atomic_write(path, lambda f: np.savez(f, **result))
    log.debug("computed %s of %d images of %s/%s in %.1f s → %s", name, end - begin, data.name, split, seconds, path)
    return result


def run_dataset(run_dir: Path, dataset: str, split: str, data_dir: str | None, allow_sample: bool,
                conform: str | None = None, skip_bad: bool = False):
    """``dataset/split`` read from ``data_dir``, or when None from the run's own data dir
    (as score() always did). The run's own training split is read as training read it (a
    folder with the run's ``data.conform``/``data.skip_bad``); another folder with ``conform``
    (default: the run's recorded transform) and its bad files refused unless ``skip_bad``
    (see :func:`vaeood.data.load.load_for_run`)."""
    run = Run(run_dir)
    data_config = run.config.data if (run.path / CONFIG_NAME).exists() else None
    config_dir = data_config.data_dir if data_config is not None and data_dir is None else None
    if data_config is None:
        return load_dataset(dataset, split, data_dir=data_dir, allow_sample=allow_sample, conform=conform,
                            skip_bad=skip_bad)
    return load_for_run(data_config, dataset, split, data_dir=data_dir or config_dir, allow_sample=allow_sample,
                        conform=run.conform_for(conform), skip_bad=skip_bad, run_dir=run_dir)


def _conform_to_model(images: np.ndarray, model, conform: str | None, data, run_dir: Path, uses_model: bool = True):
    """``images`` conformed to the model's shape by ``conform`` (refused when None and the
    shapes differ), and the conform's record for the metadata (None when none was needed).
    A feature that does not use the model (a backbone, which resizes any image itself) takes
    the images as they are unless a conform is asked for."""
    height, width, channels = images.shape[1:]
    image_shape = (channels, height, width)
    if image_shape == tuple(model.image_shape) or (conform is None and not uses_model):
        return images, None
    shapes = f"{shape_text(image_shape)} → {shape_text(model.image_shape)}"
    if conform is None:
        raise ShapeMismatchError(
            f"{data.name}/{data.split} images are C×H×W = {shape_text(image_shape)} but the model in "
            f"{run_dir} was trained on {shape_text(model.image_shape)}; score a dataset of the same "
            "shape, or pass --pad (zero-pad centred) or --resize (bilinear) to make it fit "
            "(conform='pad'/'resize' in Python)")
    images = conform_images(images, tuple(model.image_shape), conform)
    conformed = {"method": conform, "from_shape": list(image_shape), "to_shape": list(model.image_shape),
                 "description": f"{conform} {shapes}"}
    log.warning("%s/%s: images conformed to the model by %s, %s (recorded in the features' metadata)",
                data.name, data.split, conform, shapes)
    return images, conformed
