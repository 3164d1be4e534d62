"""Compressed size of each image by a lossless codec: the complexity estimate of
Serrà et al. (ICLR 2020), "Input complexity and out-of-distribution detection with
likelihood-based generative models", who used PNG and FLIF (here JPEG-XL, FLIF's
successor, through ``imagecodecs``).

Sizes are of the compressed *payload*, in bits, so that a constant image costs nearly
nothing: for PNG the bytes of the IDAT chunks (the deflate stream of the filtered
pixels at the highest compression level, less its 2-byte zlib header and 4-byte
Adler-32 checksum), without the fixed signature/IHDR/IEND overhead of the file; for
JPEG-XL the bare codestream (no container), effort 9, lossless.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ..infra.progress import bar
from .core import FEATURES

CODECS = ("png", "jxl")


def png_payload_bytes(image: np.ndarray) -> int:
    """Bytes of the deflate stream in the IDAT chunks of the lossless PNG of ``image``
    (uint8 ``[H, W]`` or ``[H, W, C]``), less the zlib wrapper's 6 bytes."""
    import imagecodecs

    data = imagecodecs.png_encode(image, level=9)
    pos, total = 8, 0  # after the 8-byte signature: chunks of length, type, data, CRC
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        if data[pos + 4: pos + 8] == b"IDAT":
            total += length
        pos += 12 + length
    return total - 6


def jxl_bytes(image: np.ndarray) -> int:
    """Bytes of the lossless JPEG-XL codestream of ``image``."""
    import imagecodecs

    return len(imagecodecs.jpegxl_encode(image, lossless=True, effort=9))


_ENCODERS = {"png": png_payload_bytes, "jxl": jxl_bytes}


def compressed_bytes(images: np.ndarray, codec: str = "png") -> np.ndarray:
    """Compressed payload bytes of each uint8 image ``[N, H, W, C]``, encoded on torch's number
    of threads (the encoders release the GIL: 1.4× on 2 cores; each image's size is its own)."""
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    encode = _ENCODERS[codec]

    def size(image: np.ndarray) -> int:
        return encode(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        sizes = list(bar(pool.map(size, images), desc=f"{codec} sizes", total=len(images)))
    return np.asarray(sizes, dtype=np.float64)


@FEATURES.register("compressed")
def compressed(model, x: Tensor, *, generator: torch.Generator | None = None, codec: str = "png") -> dict[str, Tensor]:
    r"""``{codec}_bits``: L(x), the lossless compressed size of the image in bits, and
    ``{codec}_bpd`` = L(x) / D (D = C·H·W). Model-free (depends on the image only)."""
    images = x.permute(0, 2, 3, 1).cpu().numpy()
    bits = torch.from_numpy(8.0 * compressed_bytes(images, codec))
    return {f"{codec}_bits": bits, f"{codec}_bpd": bits / x[0].numel()}


compressed.uses_model = False
compressed.draws_noise = False  # one image's bits serve every seed (features.core)
