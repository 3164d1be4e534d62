"""A run directory: one trained model and everything made from it.

Layout::

    RUN/config.json        resolved config (also inside the checkpoint)
    RUN/metrics.jsonl      one line per finished epoch
    RUN/checkpoint.pt      last finished epoch (model, optimiser, RNG, history)
    RUN/features/*.npz     per-image features (log p(x), posterior stats, ...), cached by checkpoint + data digest
    RUN/detector_scores/   per-image detector scores of the last evaluate (ROC curves)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import Config, ConfigError
from ..data.folder_cache import release
from ..models import VAE, build_model


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or a CUDA device; asking for CUDA without one is an error, not a fallback."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[VAE, Config, dict]:
    """The trained model of a run directory, its config and the checkpoint's metadata."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu")
    config = Config.from_dict(state["config"], where=f"{run_dir}/{CHECKPOINT_NAME}:config")
    model = build_model(config.model, tuple(state["image_shape"]))
    model.load_state_dict(state["model"])
    dev = resolve_device(device)
    model.to(dev).eval()
    # conv models score in NHWC on every device: oneDNN's and cuDNN's NHWC kernels run the
    # decoder's transposed convolutions faster (benchmarks/elbo_speed.py, iwae_settings.py);
    # the numbers agree with NCHW to float rounding (tests/test_models.py). Training stays
    # NCHW unless train.channels_last asks, since NHWC slowed whole training steps here.
    if config.train.channels_last or config.model.arch == "conv":
        model.to(memory_format=torch.channels_last)
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng")}
    return model, config, meta


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC numpy images → uint8 NCHW tensor on ``device`` (a copy where the NCHW view would
    be read-only: a memory-mapped folder's, :mod:`vaeood.data.folder_cache`)."""
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)


class MappedImages:
    """The training images of a memory-mapped folder (:mod:`vaeood.data.folder_cache`) as
    training indexes them: ``images[index]`` is the batch :func:`to_tensor` of the whole array
    would give (uint8 NCHW, contiguous, on ``device``: the same bits), read from the file. The
    pages read are given back every :attr:`RELEASE_EVERY` batches (8: a few MB), so resident memory is
    bounded by those batches, not by the folder."""

    RELEASE_EVERY = 8

    def __init__(self, images: np.memmap, device: torch.device | str = "cpu"):
        self.images, self.device, self.reads = images, device, 0
        self.shape = torch.Size((len(images), images.shape[3], *images.shape[1:3]))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        batch = to_tensor(self.images[index.cpu().numpy()], self.device)
        self.reads += 1
        if self.reads % self.RELEASE_EVERY == 0:
            release(self.images)
        return batch
