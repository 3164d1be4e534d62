"""Per-image noise: standard normals keyed on each image's bytes and a seed, so that an
image's stochastic features depend on the image and the seed alone — not on its position
in a batch or a slice, the batch size, the other images, the number of processes or the
device. Identical images get identical noise.

Two shapes of draw, one key (:func:`image_seeds`: BLAKE2b of the seed, a tag, the image's
dtype, shape and bytes):

* :func:`image_normals`: one block ``[*shape[:-1], B, shape[-1]]`` per call (likelihood
  regret's draws: its bound and optimisation noise, each its own tag);
* :class:`ImageNoise`: a stream per image and row width, consumed a row per sample index
  by :func:`vaeood.inference.gaussian.standard_normal` and the hierarchical VAE's ``draw_noise``
  when they are given one as their ``generator``. Each image's stream is drawn in pages of
  fixed sizes (1, 2, 4, … up to ``MAX_PAGE`` rows, then ``MAX_PAGE`` each), one
  ``torch.randn`` call per image and page, so sample k of an image is the same however the
  samples are chunked, and K samples cost about ``log2 K`` calls per image, not K.

Draws are made on the CPU (in float32 or float64, as the tensor they go with) and moved to
that tensor's device, so the same image and seed give the same noise on any device.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["ImageNoise", "image_seeds", "image_normals", "noise_seed", "MAX_PAGE"]

MAX_PAGE = 256  # rows of one page of an image's stream (bounds the memory of a page: B × 256 × width)


def image_seeds(x: Tensor, seed: int, tag: str) -> list[int]:
    """One 63-bit generator seed per image of ``x`` ``[B, ...]``: BLAKE2b of
    (seed, tag, dtype, image shape, the image's bytes)."""
    host = x.detach().cpu().contiguous()
    header = f"{int(seed)}|{tag}|{host.dtype}|{tuple(host.shape[1:])}".encode()
    out = []
    for b in range(host.shape[0]):
        digest = hashlib.blake2b(header + host[b].numpy().tobytes(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return out


def image_normals(x: Tensor, seed: int, tag: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``[*shape[:-1], B, shape[-1]]`` standard normals; image b's slice comes from a
    generator seeded by (seed, tag, shape, image b's bytes), so it is the same in any batch."""
    draws = []
    for key in image_seeds(x, seed, f"{tag}|{tuple(shape)}"):
        g = torch.Generator().manual_seed(key)
        draws.append(torch.randn(shape, generator=g, dtype=torch.float64))
    noise = torch.stack(draws, dim=-2) if draws else torch.zeros(*shape[:-1], 0, shape[-1], dtype=torch.float64)
    return noise.to(device=like.device, dtype=like.dtype)


def noise_seed(generator) -> int:
    """The seed a per-image draw keys on: an :class:`ImageNoise`'s seed, a torch
    generator's initial seed, or torch's default seed when ``generator`` is None."""
    if isinstance(generator, ImageNoise):
        return generator.seed
    return generator.initial_seed() if generator is not None else torch.initial_seed()


def _page_rows(page: int) -> int:
    return min(2 ** page, MAX_PAGE)


class _Stream:
    """Image b's rows of one width: a generator per image and the rows drawn, not yet used."""

    def __init__(self, keys: list[int], width: int):
        self.width = width
        self.generators = [torch.Generator().manual_seed((k + 1_000_003 * width) & (2**63 - 1)) for k in keys]
        self.pages = 0
        self.rows: list[Tensor] = []  # pages [B, rows, width] not yet (fully) used
        self.offset = 0  # rows of rows[0] already used

    def take(self, num: int, dtype: torch.dtype) -> Tensor:
        """The next ``num`` rows of every image: ``[num, B, width]``."""
        have = sum(p.shape[1] for p in self.rows) - self.offset
        while have < num:
            n = _page_rows(self.pages)
            self.pages += 1
            page = [torch.randn((n, self.width), generator=g, dtype=dtype) for g in self.generators]
            self.rows.append(torch.stack(page) if page else torch.zeros(0, n, self.width, dtype=dtype))
            have += n
        out, need = [], num
        while need:
            first = self.rows[0]
            part = first[:, self.offset:self.offset + need]
            out.append(part)
            need -= part.shape[1]
            self.offset += part.shape[1]
            if self.offset == first.shape[1]:
                self.rows.pop(0)
                self.offset = 0
        joined = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return joined.transpose(0, 1)


class ImageNoise:
    """The noise source of one batch ``x`` ``[B, ...]``: pass it as the ``generator`` of the
    estimators (:mod:`vaeood.inference.estimators`), the test-time refinement, ``llr_bounds`` or
    ``likelihood_regret``; each image's draws then depend only on its bytes, ``seed`` and
    ``tag`` (see the module docstring). It keeps its position: a second call continues the
    streams, as a torch generator would. The images are hashed at the first draw, not when it is
    made (most features draw nothing): ``x`` must not change in between."""

    def __init__(self, x: Tensor, seed: int = 0, tag: str = "features"):
        self.seed, self.tag = int(seed), tag
        self.batch = int(x.shape[0])
        self._x = x
        self._keys: list[int] | None = None  # hashed at the first draw: most features draw nothing
        self._streams: dict[tuple[int, torch.dtype], _Stream] = {}

    def initial_seed(self) -> int:
        return self.seed

    def normal(self, num: int, width: int, like: Tensor) -> Tensor:
        """The next ``num`` standard-normal rows of ``width`` numbers per image: ``[num, B, width]``,
        on ``like``'s device and in its dtype."""
        if like.shape[0] != self.batch:
            raise ValueError(f"ImageNoise was made for a batch of {self.batch} images, asked for {like.shape[0]}")
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        stream = self._streams.get((width, dtype))
        if stream is None:
            if self._keys is None:
                self._keys, self._x = image_seeds(self._x, self.seed, self.tag), None
            stream = self._streams[(width, dtype)] = _Stream(self._keys, width)
        return stream.take(int(num), dtype).to(device=like.device, dtype=like.dtype)
