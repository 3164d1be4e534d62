"""Tiny stand-in datasets written as ``NAME_SPLIT.npz`` files, for end-to-end tests.

Two visibly different families so that a trained model has something to separate:
"blobs" (bright filled shapes on a dark ground, Fashion-MNIST-like) and "strokes"
(thin lines, MNIST-like). Also :func:`raise_saved_epochs`, for the resume tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def raise_saved_epochs(run: Path, epochs: int) -> None:
    """Make a run stopped after some epochs look like a longer one killed there: a resumed
    run continues with its saved config, so its ``train.epochs`` is raised in the checkpoint."""
    import torch

    from vaeood.training.checkpoint import load_checkpoint

    state = load_checkpoint(run)
    state["config"]["train"]["epochs"] = epochs
    torch.save(state, Path(run) / "checkpoint.pt")


def blobs(n: int, seed: int, size: int = 28, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, (2, n, 1, 1))
    r = rng.uniform(size * 0.2, size * 0.35, (n, 1, 1))
    level = rng.uniform(120, 250, (n, 1, 1))
    img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2, level, 0) + rng.normal(0, 8, (n, size, size))
    return _finish(img, channels)


def strokes(n: int, seed: int, size: int = 28, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((n, size, size))
    col = rng.integers(size // 3, 2 * size // 3, n)
    for i in range(n):
        img[i, 4:-4, col[i]: col[i] + 2] = 255
        img[i, rng.integers(4, size - 4), 6:-6] = 255
    return _finish(img, channels)


def _finish(img: np.ndarray, channels: int) -> np.ndarray:
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img if channels == 1 else np.repeat(img[..., None], channels, axis=-1)


def write_npz(directory: Path, name: str, split: str, images: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{split}.npz"
    np.savez(path, x=images, y=np.arange(len(images)) % 10)
    return path


def write_fig2a_data(directory: Path, n_train: int = 256, n_test: int = 128) -> Path:
    """Stand-ins named like the real sets: fashion_mnist (blobs) and mnist (strokes)."""
    write_npz(directory, "fashion_mnist", "train", blobs(n_train, 0))
    write_npz(directory, "fashion_mnist", "test", blobs(n_test, 1))
    write_npz(directory, "mnist", "train", strokes(n_train, 2))
    write_npz(directory, "mnist", "test", strokes(n_test, 3))
    return directory
