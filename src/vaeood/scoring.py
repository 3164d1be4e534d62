"""Per-image log-likelihood estimates of a dataset under a trained run, saved in the run
directory (``RUN/scores/*.npz``) and reused while the checkpoint is unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_write
from .checkpoint import checkpoint_path
from .config import ConfigError
from .data import load_dataset
from .estimators import ESTIMATORS, bits_per_dim
from .run import load_model, to_tensor

log = logging.getLogger(__name__)


class ShapeMismatchError(ValueError):
    """The images to score do not have the shape the model was trained on."""


def score(run_dir: str | Path, dataset: str, split: str = "test", *, estimator: str = "elbo",
          estimator_options: dict | None = None, data_dir: str | None = None, limit: int | None = None,
          batch_size: int | None = None, device: str = "cpu", seed: int = 0, allow_sample: bool = False,
          reuse: bool = True, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Estimate log p(x) for every image of ``dataset/split`` with the run's model.

    Returns arrays of shape ``[N]``: ``log_px_nats`` and the estimator's diagnostics,
    ``bpd`` when the decoder is a normalised pmf over 8-bit values, and ``labels``.
    Saved to ``RUN/scores/`` and returned from there when the same request is repeated
    on the same checkpoint.
    """
    run_dir = Path(run_dir)
    fn = ESTIMATORS.get(estimator)
    options = _accepted_options(fn, estimator_options or {}, estimator)
    ckpt_sha = _sha256(checkpoint_path(run_dir))
    tag = "_".join([dataset, split, estimator, *(f"{k}{v}" for k, v in sorted(options.items())),
                    *([f"first{limit}"] if limit else []), f"seed{seed}"])
    path = run_dir / "scores" / f"{tag}.npz"
    if reuse and path.exists():
        with np.load(path, allow_pickle=False) as f:
            saved = {k: f[k] for k in f.files}
        if json.loads(str(saved["meta"])).get("checkpoint_sha256") == ckpt_sha:
            log.info("reusing %s", path)
            return saved

    model, config, meta = load_model(run_dir, device)
    data = load_dataset(dataset, split, data_dir=data_dir or config.data.data_dir, allow_sample=allow_sample)
    images = data.images[:limit] if limit else data.images
    height, width, channels = images.shape[1:]
    image_shape = (channels, height, width)
    if image_shape != tuple(model.image_shape):
        raise ShapeMismatchError(
            f"{data.name}/{data.split} images are C×H×W = {'×'.join(map(str, image_shape))} but the model in "
            f"{run_dir} was trained on {'×'.join(map(str, model.image_shape))}; score a dataset of the same shape")

    batch_size = batch_size or 1000
    dev = next(model.parameters()).device
    show = sys.stderr.isatty() if progress is None else progress
    chunks: dict[str, list[np.ndarray]] = {}
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for i in tqdm(range(0, len(images), batch_size), desc=f"{estimator} {data.name}/{split}",
                      disable=not show, leave=False):
            x = to_tensor(images[i: i + batch_size], dev)
            for key, value in fn(model, x, **options).items():
                chunks.setdefault(key, []).append(value.double().cpu().numpy())
    result = {k: np.concatenate(v) for k, v in chunks.items()}
    if model.likelihood.normalised:
        result["bpd"] = bits_per_dim(torch.from_numpy(result["log_px_nats"]), model.num_dims).numpy()
    result["labels"] = data.labels[: len(images)]
    info = {"dataset": data.name, "split": data.split, "source": data.source, "is_sample": data.is_sample,
            "estimator": estimator, "options": options, "limit": limit, "seed": seed,
            "checkpoint_epoch": meta["epoch"], "checkpoint_sha256": ckpt_sha,
            "likelihood": config.model.likelihood, "normalised": model.likelihood.normalised,
            "num_dims": model.num_dims, **pixel_stats(images)}
    result["meta"] = np.array(json.dumps(info))
    atomic_write(path, lambda f: np.savez(f, **result))
    log.info("scored %d images of %s/%s with %s → %s", len(images), data.name, split, estimator, path)
    return result


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Mean and variance of the pixel values on the [0, 1] scale (over all pixels and
    images): the study explains SVHN's high likelihood under a CIFAR-10 model by its
    similar mean and smaller variance."""
    x = images.astype(np.float64) / 255.0
    return {"pixel_mean": float(x.mean()), "pixel_var": float(x.var())}


def score_meta(scores: dict[str, np.ndarray]) -> dict:
    return json.loads(str(scores["meta"]))


def _accepted_options(fn, options: dict, name: str) -> dict:
    params = inspect.signature(fn).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(f"estimator {name!r} takes no option {unknown[0]!r}; "
                        f"its options: {', '.join(p for p in list(params)[2:])}")
    return dict(options)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
