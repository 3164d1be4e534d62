"""MNIST and Fashion-MNIST from their official gzip-compressed IDX files.

Both datasets use the same four file names, so they must live in separate folders
(``DIR/mnist/``, ``DIR/fashion_mnist/``); a mixed-up file is recognised by its MD5.
URLs and MD5 sums are the published ones, as checked by ``torchvision.datasets``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_gz
from .checksums import named_sha256
from .imageset import ImageSet
from .official import DATASETS, OfficialDataset

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class IDXDataset(OfficialDataset):
    """A 10-class grey-scale dataset stored as an images and a labels IDX file per split."""

    files = _IDX_FILES

    def find(self, folder: Path, split: str) -> Path | None:
        return folder if all((folder / f).is_file() for f in self.files[split]) else None

    def load(self, found: Path, split: str) -> ImageSet:
        images_path, labels_path = (found / f for f in self.files[split])
        images = read_idx_gz(self.read_verified(images_path), IMAGES_MAGIC, images_path)
        labels = read_idx_gz(self.read_verified(labels_path), LABELS_MAGIC, labels_path)
        if images.ndim != 3:
            raise DataError(f"{images_path}: expected 3-D images [N, H, W], found shape {images.shape}")
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels; the two files must come from the same split"
            )
        return ImageSet(
            name=self.name,
            split=split,
            images=images[..., np.newaxis],  # grey: add the channel axis, C = 1
            labels=labels.astype(np.int64),
            source=f"{images_path.name} + {labels_path.name} (official {self.title} IDX files)",
            files=named_sha256(images_path, labels_path),
        )


@DATASETS.register("fashion_mnist")
class FashionMNIST(IDXDataset):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28×28 grey images of clothes."""

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    licence = "© Zalando SE, MIT licence"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    md5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    system_dirs = (("/usr/share/datasets/fashion-mnist", "Debian package dataset-fashion-mnist"),)
    hints = (
        "on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` puts the official files "
        "in /usr/share/datasets/fashion-mnist, which is searched automatically",
    )


@DATASETS.register("mnist")
class MNIST(IDXDataset):
    """MNIST (LeCun, Cortes & Burges): 28×28 grey images of hand-written digits."""

    name = "mnist"
    title = "MNIST"
    licence = "© Yann LeCun and Corinna Cortes, CC BY-SA 3.0 licence"
    # torchvision's S3 mirror first: yann.lecun.com often refuses automated downloads.
    mirrors = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    md5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
