"""Per-image log-likelihood estimates of a dataset under a trained run, saved in the run
directory (``RUN/scores/*.npz``) and reused while the checkpoint is unchanged.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .atomic import atomic_write
from .checkpoint import checkpoint_path
from .data import load_dataset
from .data.checksums import file_hexdigest
from .data.fit import FITS, fit_images
from .estimators import ESTIMATORS, bits_per_dim
from .registry import check_options
from .run import load_model, to_tensor
from .runlock import holds_run_lock

log = logging.getLogger(__name__)


class ShapeMismatchError(ValueError):
    """The images to score do not have the shape the model was trained on."""


@holds_run_lock("score")  # it writes RUN/scores
def score(run_dir: str | Path, dataset: str, split: str = "test", *, estimator: str = "elbo",
          estimator_options: dict | None = None, data_dir: str | None = None, limit: int | None = None,
          batch_size: int | None = None, device: str = "cpu", seed: int = 0, allow_sample: bool = False,
          reuse: bool = True, progress: bool | None = None, fit: str | None = None) -> dict[str, np.ndarray]:
    """Estimate log p(x) for every image of ``dataset/split`` with the run's model.

    Images of another shape than the model's are refused (:class:`ShapeMismatchError`)
    unless ``fit`` names how to make them fit: ``"pad"`` (zero-pad centred) or
    ``"resize"`` (bilinear), with grey ↔ RGB converted (see :mod:`vaeood.data.fit`); the
    fit applied is recorded in the saved metadata (``meta["fit"]``).

    Returns arrays of shape ``[N]``: ``log_px_nats`` and the estimator's diagnostics,
    ``bpd`` when the decoder is a normalised pmf over 8-bit values, and ``labels``.
    Saved to ``RUN/scores/`` and returned from there when the same request is repeated
    on the same checkpoint.
    """
    run_dir = Path(run_dir)
    fn = ESTIMATORS.get(estimator)
    options = check_options(fn, estimator_options or {}, "estimator", estimator, ("model", "x", "generator"))
    if fit is not None:
        FITS.get(fit)  # an unknown fit is refused before any work
    ckpt_sha = file_hexdigest(checkpoint_path(run_dir), "sha256")
    tag = "_".join([dataset, split, estimator, *(f"{k}{v}" for k, v in sorted(options.items())),
                    *([f"first{limit}"] if limit else []), *([f"fit{fit}"] if fit else []), f"seed{seed}"])
    path = run_dir / "scores" / f"{tag}.npz"
    if reuse and path.exists():
        with np.load(path, allow_pickle=False) as f:
            saved = {k: f[k] for k in f.files}
        if score_meta(saved).get("checkpoint_sha256") == ckpt_sha:
            log.info("reusing %s", path)
            return saved

    model, config, meta = load_model(run_dir, str(distributed.setup(device)))
    data = load_dataset(dataset, split, data_dir=data_dir or config.data.data_dir, allow_sample=allow_sample)
    images = data.images[:limit] if limit else data.images
    height, width, channels = images.shape[1:]
    image_shape = (channels, height, width)
    fitted = None
    if image_shape != tuple(model.image_shape):
        shapes = f"{'×'.join(map(str, image_shape))} → {'×'.join(map(str, model.image_shape))}"
        if fit is None:
            raise ShapeMismatchError(
                f"{data.name}/{data.split} images are C×H×W = {'×'.join(map(str, image_shape))} but the model in "
                f"{run_dir} was trained on {'×'.join(map(str, model.image_shape))}; score a dataset of the same "
                "shape, or pass --pad (zero-pad centred) or --resize (bilinear) to make it fit "
                "(fit='pad'/'resize' in Python)")
        images = fit_images(images, tuple(model.image_shape), fit)
        fitted = {"method": fit, "from_shape": list(image_shape), "to_shape": list(model.image_shape),
                  "description": f"{fit} {shapes}"}
        log.warning("%s/%s: images fitted to the model by %s, %s (recorded in the scores' metadata)",
                    data.name, data.split, fit, shapes)

    batch_size = batch_size or 1000
    dev = next(model.parameters()).device
    # the chunk bound fits the device; the scores' metadata records only what was asked for
    run_options = {**memory_sized_options(fn, dev), **options}
    show = (sys.stderr.isatty() if progress is None else progress) and distributed.is_main()
    rank, world = distributed.rank(), distributed.world_size()
    starts = range(0, len(images), batch_size)
    mine: dict[int, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        # batch b draws its noise from its own generator seeded by (seed, b) and goes to
        # rank b mod W: the scores do not depend on the number of processes
        for b in tqdm(range(rank, len(starts), world), desc=f"{estimator} {data.name}/{split}",
                      disable=not show, leave=False):
            x = to_tensor(images[starts[b]: starts[b] + batch_size], dev)
            generator = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + b)
            estimates = fn(model, x, generator=generator, **run_options)
            mine[b] = {k: v.double().cpu().numpy() for k, v in estimates.items()}
    batches = {b: r for part in distributed.gather_objects(mine) for b, r in part.items()}
    result = {k: np.concatenate([batches[b][k] for b in range(len(starts))]) for k in batches[0]}
    if model.likelihood.normalised:
        result["bpd"] = bits_per_dim(torch.from_numpy(result["log_px_nats"]), model.num_dims).numpy()
    result["labels"] = data.labels[: len(images)]
    info = {"dataset": data.name, "split": data.split, "source": data.source, "is_sample": data.is_sample,
            "estimator": estimator, "options": options, "limit": limit, "seed": seed,
            "checkpoint_epoch": meta["epoch"], "checkpoint_sha256": ckpt_sha,
            "likelihood": config.model.likelihood, "normalised": model.likelihood.normalised,
            "num_dims": model.num_dims, "fit": fitted, **pixel_stats(images)}
    result["meta"] = np.array(json.dumps(info))
    atomic_write(path, lambda f: np.savez(f, **result))
    log.info("scored %d images of %s/%s with %s → %s", len(images), data.name, split, estimator, path)
    return result


def memory_sized_options(fn, device: torch.device) -> dict:
    """On a GPU, let the IWAE estimator use an eighth of the free memory for its sample
    chunks (its default bound is sized for a CPU)."""
    if device.type != "cuda" or "max_elements" not in inspect.signature(fn).parameters:
        return {}
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return {"max_elements": int(free_bytes // (8 * 4))}


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Mean and variance of the pixel values on the [0, 1] scale (over all pixels and
    images): the study explains SVHN's high likelihood under a CIFAR-10 model by its
    similar mean and smaller variance."""
    x = images.astype(np.float64) / 255.0
    return {"pixel_mean": float(x.mean()), "pixel_var": float(x.var())}


def score_meta(scores: dict[str, np.ndarray]) -> dict:
    return json.loads(str(scores["meta"]))
