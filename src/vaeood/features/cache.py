"""The cache of :func:`vaeood.features.core.compute_feature`: where a feature's file lives, its
key, and reading it back.

Cache (:func:`compute_feature`): ``RUN/features/<tag>.npz`` holds one feature of one
slice of one dataset split: its arrays, the labels and a JSON ``meta`` that records the
key — the checkpoint's SHA-256 (for features that use the model), the SHA-256 of the
images of the slice (their bytes, so a data file replaced in place or another
``--data-dir`` is a different key), the slice, the conform, the feature options and the
seed. A cached file is used only when every part of the key matches; a file that fails
to load is recomputed, with a warning naming it.

``shared_cache=FOLDER`` (or every call inside ``with shared_feature_cache(FOLDER)``): a feature
of the image alone (``uses_model = False``: a backbone's) is cached in FOLDER, read by every run
given it (one test set, many models: computed once), its file named with the images' digest too
and its metadata free of any run's model; one of conformed images is keyed by the shape they are
conformed to as well (a conform depends on the run's image shape alone), so the seeds of one
family share it. A producer that draws no noise (``draws_noise = False``) is
keyed without the seed, so one image's features serve every seed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger("vaeood.features.core")  # the cache's lines are the feature computation's

FEATURES_DIR = "features"

# version of the cache files; files of another format are recomputed. 3: noise keyed on each
# image's bytes and the seed (vaeood.inference.noise), no longer on the batch; 4: data_sha256
# is images_digest as calibration files record it (shape, then dtype name), no longer
# (dtype code, shape), so the caches' digests of 3 would not match it; 5: the key's
# "fit_method" and the metadata's "fit" are named "conform" (the same numbers); 6: the conform
# asked for is keyed as "conform_method" (the metadata's "conform" is the record of the conform
# applied, which overwrote the key's "conform", so no file made with a conform was ever reused)
FORMAT = 6


# the folder of shared_feature_cache(), used where a call names none
_SHARED_CACHE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("shared_cache", default=None)


@contextlib.contextmanager
def shared_feature_cache(folder: str | Path):
    """Every :func:`compute_feature` inside the block that names no ``shared_cache`` uses ``folder``
    (the module docstring): an experiment's many runs and seeds then share the features of the
    image alone, through calibration and decisions as well as evaluation."""
    token = _SHARED_CACHE.set(Path(folder))
    try:
        yield
    finally:
        _SHARED_CACHE.reset(token)


def cache_path(run_dir: Path, tag: str, data_sha256: str, *, uses_model: bool,
               shared_cache: str | Path | None) -> Path:
    """The file of one feature: in the shared folder (``shared_cache``, else that of
    :func:`shared_feature_cache`) for a feature of the image alone (conformed images are
    keyed and tagged by the shape they are conformed to), else in the run."""
    shared_cache = shared_cache if shared_cache is not None else _SHARED_CACHE.get()
    if shared_cache is not None and not uses_model:
        return Path(shared_cache) / f"{tag}_{data_sha256[:12]}.npz"
    return run_dir / FEATURES_DIR / f"{tag}.npz"


def conform_keyed(key: dict, conform: str, image_shape) -> str:
    """A feature of the image alone, of images conformed to a run, depends on the run only
    through the shape they are conformed to: that shape joins ``key``; returns the conform as the
    file name gives it (``pad3x32x32``), so that the runs of one shape share the file."""
    key["conform_to"] = list(image_shape)
    return f"{conform}{'x'.join(map(str, image_shape))}"


def cache_tag(dataset: str, split: str, name: str, options: dict, begin: int, end: int, n: int,
         limit: int | None, conform: str | None, seed: int | None) -> str:
    """A readable file name; the full key is checked inside the file's meta."""
    if name == "log_px":  # the estimator's name first, as the score files were named
        opts = {k: v for k, v in options.items() if k != "estimator"}
        opts = {**(opts.pop("estimator_options", None) or {}), **opts}
        head = [options.get("estimator", "elbo")]
    else:
        opts, head = options, [name]
    parts = [dataset, split, *head]
    for k, v in sorted(opts.items()):
        parts.append(f"{k}{json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}")
    if begin == 0 and limit:
        parts.append(f"first{limit}")
    elif begin or end < n:
        parts.append(f"from{begin}to{end}")
    if conform:
        parts.append(f"conform{conform}")
    if seed is not None:
        parts.append(f"seed{seed}")
    tag = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "_.-=" else "-" for c in tag)[:200]


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            saved = {k: f[k] for k in f.files}
        json.loads(str(saved["meta"]))
        return saved
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("cached features %s cannot be read (%s: %s); recomputing it", path, type(exc).__name__, exc)
        return None


def feature_meta(features: Mapping) -> dict:
    """The metadata of one cached feature result (``result["meta"]``)."""
    meta = features["meta"]
    return meta if isinstance(meta, dict) else json.loads(str(meta))


def cached_features(path: Path, key: dict):
    """The features cached at ``path`` when they were made from ``key``; else None (logged)."""
    saved = read_cache(path)
    if saved is None:
        return None
    meta = feature_meta(saved)
    if {k: meta.get(k) for k in key} == key:
        log.debug("reusing %s", path)
        return saved
    differ = [k for k in key if meta.get(k) != key[k]]
    log.debug("%s was made from another %s; recomputing", path, " and ".join(differ))
    return None
