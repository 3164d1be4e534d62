"""Several features at once, flattened into one dict of ``[N]`` arrays for detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .cache import feature_meta
from .core import Source, run_dataset, split_need, compute_feature, features_of_needs, normalise_needs
from ..infra.deprecated import renamed_keywords


def _merge(out: dict, arrays: Mapping[str, np.ndarray], prefix: str, key: str) -> None:
    for name, value in arrays.items():
        if name in ("labels", "meta"):
            continue
        flat = prefix + name
        if flat in out and not np.array_equal(out[flat], value, equal_nan=True):
            raise ValueError(f"two features give different values named {flat!r} (the second from need {key!r}); "
                             "give one of them an alias: {'alias': {'feature': name, ...}}")
        out[flat] = value


@renamed_keywords(fit="conform")  # its name until 0.2
def compute_features(run_dir: str | Path, dataset: str, split: str = "test",
                     needs: Mapping[str, dict] | Iterable[str] | str = ("log_px",), *, data_dir: str | None = None,
                     limit: int | None = None, start: int | None = None, stop: int | None = None,
                     batch_size: int | None = None, device: str = "cpu", seed: int = 0, conform: str | None = None,
                     allow_sample: bool = False, reuse: bool = True, progress: bool | None = None,
                     shared_cache: str | Path | None = None, skip_bad: bool = False) -> dict:
    """The features ``needs`` of images ``[start, stop)`` (or the first ``limit``) of
    ``dataset/split`` under the run's model, each cached in ``RUN/features/`` (see
    :func:`compute_feature` for the cache key).

    ``needs``: a feature name, a list of names, or ``{key: options}`` where a key is a
    feature's name or an alias (``{"background": {"feature": "log_px", "run": "runs/bg"}}``
    computes ``log_px`` with another run's model, cached in that run, and returns its
    outputs as ``"background/log_px_nats"``, ...). ``shared_cache``: a folder where the features
    that do not use the model are cached instead, for every run given it (:func:`compute_feature`).
    ``skip_bad``: skip a folder's unusable files instead of refusing it.

    Returns a flat dict: every output ``[N]`` (e.g. ``log_px_nats``, ``bpd``,
    ``mu_z_norm``, ``png_bits``), ``labels`` ``[N]`` and ``meta``: ``{key: metadata}``
    (a dict, not an array: dataset, slice, digests, seconds taken, ...).

    """
    needs = normalise_needs(needs)
    sources: dict[str, Source] = {}
    data = None
    out: dict = {}
    metas = {}
    for key, options in needs.items():
        name, producer, other, prefix = split_need(key, options)
        where = Path(other) if other is not None else Path(run_dir)
        source = sources.setdefault(str(where), Source(where, device))
        source.sha256  # noqa: B018  a missing checkpoint is reported before any data is read
        if data is None:
            data = run_dataset(Path(run_dir), dataset, split, data_dir, allow_sample, conform, skip_bad)
        result = compute_feature(where, dataset, split, name, producer, data_dir=data_dir, limit=limit, start=start,
                                 stop=stop, batch_size=batch_size, device=device, seed=seed, conform=conform,
                                 allow_sample=allow_sample, reuse=reuse, progress=progress,
                                 shared_cache=shared_cache, _source=source, _data=data)
        _merge(out, result, prefix, key)
        out.setdefault("labels", result["labels"])
        metas[key] = feature_meta(result)
    out["meta"] = metas
    return out


def needs_features(model, images, needs: Mapping[str, dict] | Iterable[str] | str = ("log_px",), *, seed: int = 0,
                   batch_size: int | None = None, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Uncached :func:`compute_features` for a model object (your own VAE, see
    :mod:`vaeood.byo`) and an array of images (uint8 numpy ``[N, H, W, C]`` or tensor
    ``[N, C, H, W]``). An aliased need's ``"run"`` is then another model object."""
    if len(images) == 0:  # else every detector would fail on a missing feature
        raise ValueError(f"images holds no images (shape {tuple(images.shape)}); give at least one")
    needs = normalise_needs(needs)
    jobs, prefixes = [], []
    for key, options in needs.items():
        name, producer, _, prefix = split_need(key, {k: v for k, v in options.items() if k != "run"})
        the_model = options.get("run", model)
        if isinstance(the_model, (str, Path)):
            raise TypeError(f"need {key!r}: with a model object, 'run' must be another model object, not a path")
        jobs.append((the_model, name, producer))
        prefixes.append((f"{key}/" if "run" in options else prefix, key))
    out: dict = {}
    # batch by batch, all needs together: a model's encoder runs once a batch (features.core.features_of_needs)
    for result, (prefix, key) in zip(features_of_needs(jobs, images, seed=seed, batch_size=batch_size,
                                                        progress=progress), prefixes, strict=True):
        _merge(out, result, prefix, key)
    return out
