"""Checkpoints: what a run needs to be resumed or re-scored, saved atomically and loaded
without unpickling arbitrary objects.

A checkpoint holds only tensors, numbers, strings, lists and dicts (the resolved
config, model and optimiser state, epoch, RNG state), so it loads with
``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code is refused instead of executed.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from ..infra.atomic import atomic_write
from ..data.errors import DataError
from ..data.regular_files import open_regular_file

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("config", "epoch", "image_shape", "model")  # what load_model and --resume need


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or carries objects that are not plain data."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return atomic_write(path, lambda f: torch.save(state, f))


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of a run directory (or the file itself); an error if absent."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train a model first (`vaeood train`)")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint file, or the checkpoint of a run directory, as plain data.

    Raises :class:`CheckpointError` if the file is missing, truncated or corrupt, holds
    anything but tensors and plain data (nothing in it is executed), or lacks the
    entries every vaeood checkpoint has (``REQUIRED_KEYS``).
    """
    path = checkpoint_path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            with open_regular_file(path) as f:  # a FIFO or device is refused, never opened
                state = torch.load(f, map_location=map_location, weights_only=True)
    except DataError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain data, "
            f"which could run code when loaded, so it was not unpickled ({_unpickler_reason(exc)}). "
            "Only load checkpoints written by vaeood; do not bypass this check for files from others") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a vaeood checkpoint: it holds a {type(state).__name__}, "
                              f"expected a dict with {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a vaeood checkpoint: it lacks {', '.join(map(repr, missing))} "
                              f"(has {', '.join(map(repr, sorted(map(str, state))))})")
    return state


def _unpickler_reason(exc: Exception) -> str:
    """The informative line of torch's weights-only error (e.g. which global was blocked),
    without its advice to retry with ``weights_only=False``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.rstrip(".")
    return lines[-1] if lines else type(exc).__name__
