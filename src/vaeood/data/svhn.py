"""SVHN (Street View House Numbers, cropped-digits format) from the official .mat files.

Each ``{split}_32x32.mat`` holds ``X``, uint8 ``[32, 32, 3, N]`` (MATLAB keeps the sample
axis last), and ``y``, ``[N, 1]`` with labels 1..10 where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .checksums import named_sha256
from .imageset import ImageSet
from .official import DATASETS, OfficialDataset


@DATASETS.register("svhn")
class SVHN(OfficialDataset):
    """SVHN (Netzer et al. 2011): 32×32 colour crops of house-number digits."""

    name = "svhn"
    title = "SVHN"
    licence = "Netzer et al. (2011); non-commercial use only"
    files = {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)}
    mirrors = ("http://ufldl.stanford.edu/housenumbers/",)
    md5 = {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    }

    def find(self, folder: Path, split: str) -> Path | None:
        path = folder / self.files[split][0]
        return path if path.is_file() else None

    def load(self, found: Path, split: str) -> ImageSet:
        import scipy.io  # here, not at the top: it costs ~0.3 s and only SVHN needs it

        self.verify_file(found)
        try:
            mat = scipy.io.loadmat(found, variable_names=("X", "y"))
        except Exception as err:  # scipy raises ValueError, MatReadError, OSError, ...
            raise DataError(f"{found}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None
        x, y = mat.get("X"), mat.get("y")
        if x is None or y is None:
            present = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{found}: expected variables 'X' and 'y', found {present}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
            raise DataError(f"{found}: field 'X' must be uint8 [32, 32, 3, N], found {x.dtype} {x.shape}")
        labels = y.reshape(-1).astype(np.int64)
        if len(labels) != x.shape[3]:
            raise DataError(f"{found}: field 'X' holds {x.shape[3]} images but field 'y' {len(labels)} labels")
        if labels.size and (labels.min() < 1 or labels.max() > 10):
            raise DataError(f"{found}: field 'y' must hold labels 1..10 (10 = digit 0), "
                            f"found {labels.min()}..{labels.max()}")
        labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
        images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # [H, W, C, N] -> [N, H, W, C]
        return ImageSet(self.name, split, images, labels,
                        source=f"{found.name} (official {self.title} cropped digits)", files=named_sha256(found))
