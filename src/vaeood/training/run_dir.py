"""A trained run directory read as one object, :class:`Run`: its resolved config
(``RUN/config.json``), its checkpoint and the checkpoint's SHA-256 (the key of every
cache and calibration made from the model), the model (loaded on first use), and how its
training split divides: the first :func:`training_count` images trained on, the rest
(:func:`heldout_range`) never seen in training, where detectors fit and calibrate.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

from .checkpoint import checkpoint_path, load_checkpoint
from .config import Config, ConfigError
from .run import load_model
from ..data.checksums import file_hexdigest

CONFIG_NAME = "config.json"

log = logging.getLogger(__name__)
_TOLD: set[tuple[str, str]] = set()  # (run, conform) said once in a process


def training_count(data_config, n: int) -> int:
    """How many images of the split training uses: the first ``n - holdout`` (``data.holdout``),
    at most ``data.limit``. The rest is never seen in training: detectors fit on it."""
    if data_config.holdout is not None and data_config.holdout >= n:
        raise ConfigError(f"data.holdout = {data_config.holdout}: must be below the split's {n} images")
    count = n - (data_config.holdout or 0)
    return min(count, data_config.limit) if data_config.limit else count


def heldout_range(config: Config, split_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the images of the training split that training did not use."""
    trained = training_count(config.data, split_size)
    start = split_size - config.data.holdout if config.data.holdout else trained
    return start, split_size


class Run:
    """A trained run directory; each part is read on first use and kept, so one object
    serves one task (a run trained again after it was made is not noticed).

    ``config``: the resolved config of ``RUN/config.json`` (:class:`ConfigError` when it is
    missing or not a valid config); ``checkpoint_sha256``; ``meta``: the checkpoint without
    its weights, optimiser and RNG states (:class:`vaeood.training.checkpoint.CheckpointError`
    when it is missing or corrupt); ``train_data`` and ``image_shape`` from it; ``model``
    on ``device``; :meth:`training_count` and :meth:`heldout_range` of a split of n images.
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path, self.device = Path(path), device

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def config(self) -> Config:
        return Config.from_file(self.path / CONFIG_NAME)

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.path)

    @cached_property
    def checkpoint_sha256(self) -> str:
        return file_hexdigest(self.checkpoint_path, "sha256")

    @cached_property
    def meta(self) -> dict:
        state = load_checkpoint(self.checkpoint_path, map_location="cpu")
        return {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng")}

    @property
    def train_data(self) -> dict:
        """What training recorded of its data (name, split, source, split size, folder digest); {} if nothing."""
        return self.meta.get("train_data") or {}

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["image_shape"])

    @cached_property
    def model(self):
        return load_model(self.path, self.device)[0]

    def conform_for(self, conform: str | None) -> str | None:
        """The conform that brings images to this run's shape: ``conform`` when given (``--pad``/
        ``--resize``), else the run's recorded transform (``data.conform``, how training brought
        its photos to its working size), said once per run in a process; None for a run without
        a config or a recorded transform."""
        if conform is not None or not (self.path / CONFIG_NAME).exists() or self.config.data.conform is None:
            return conform
        recorded = self.config.data.conform
        if (str(self.path), recorded) not in _TOLD:
            _TOLD.add((str(self.path), recorded))
            log.info("images of another shape than the model's are brought to it by its recorded transform, %s "
                     "(data.conform of %s; --pad/--resize to choose another)", recorded, self.path)
        return recorded

    def training_count(self, split_size: int) -> int:
        return training_count(self.config.data, split_size)

    def heldout_range(self, split_size: int) -> tuple[int, int]:
        return heldout_range(self.config, split_size)
