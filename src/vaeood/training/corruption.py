"""The corrupted training images of a background model: pixels replaced by uniform noise
(the input perturbation of Ren et al., "Likelihood Ratios for Out-of-Distribution
Detection", NeurIPS 2019) and, optionally, each image's tiles shuffled first; drawn from
a stream that is a function of (seed, epoch, rank), so a resumed run retraces them."""

from __future__ import annotations

import torch


def noise_generator(active: bool, seed: int, epoch: int, rank: int, device) -> torch.Generator | None:
    """The corruption stream of one epoch (a function of seed, epoch and rank: resumable)."""
    if not active:
        return None
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7_919 * (epoch + 1) + 104_729 * rank)


def corrupt(x: torch.Tensor, rate: float, generator: torch.Generator, patch: int = 0) -> torch.Tensor:
    """The training images of a background model, uint8 ``[B, C, H, W]``: each sub-pixel
    replaced, with probability ``rate``, by a value drawn uniformly from 0..255 (the input
    perturbation of Ren et al., NeurIPS 2019); with ``patch`` > 0, first each image's
    ``patch × patch`` tiles put in a random order of their own (:func:`shuffle_patches`)."""
    if patch:
        x = shuffle_patches(x, patch, generator)
    if not rate:
        return x
    mask = torch.rand(x.shape, generator=generator, device=x.device) < rate
    values = torch.randint(0, 256, x.shape, generator=generator, device=x.device, dtype=torch.uint8)
    return torch.where(mask, values, x)


def shuffle_patches(x: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Each image's non-overlapping ``patch × patch`` tiles in a random order (one
    permutation per image): local statistics are kept, the global arrangement is not."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"data.shuffle_patches = {patch} must divide the image size {h}×{w}")
    gh, gw = h // patch, w // patch
    tiles = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)
    order = torch.argsort(torch.rand(b, gh * gw, generator=generator, device=x.device), dim=1)
    tiles = torch.gather(tiles, 1, order[:, :, None, None, None].expand_as(tiles))
    return tiles.reshape(b, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
