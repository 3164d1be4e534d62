"""Checkpoints: what a run needs to be resumed or re-scored, saved atomically and loaded
without unpickling arbitrary objects.

A checkpoint holds only tensors, numbers, strings, lists and dicts (the resolved
config, model and optimiser state, epoch, RNG state), so it loads with
``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code is refused instead of executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


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
    """Load a checkpoint file, or the checkpoint of a run directory, as plain data."""
    path = checkpoint_path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain data, "
            f"which could run code when loaded ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
