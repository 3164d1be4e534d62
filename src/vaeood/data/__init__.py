"""Datasets for vaeood: official files (MD5-checked), any npz, and an offline sample.

Every loader returns an :class:`ImageSet`: uint8 images ``[N, H, W, C]`` (always with a
channel axis) and int64 labels ``[N]``, plus where they came from::

    from vaeood.data import load_dataset
    train = load_dataset("fashion_mnist", "train", data_dir="data/")
    train.images.shape   # (60000, 28, 28, 1)

See ``load.py`` for where data is looked for, ``official.py`` for how to add a dataset
with official files, and ``npz.py`` for the format of any other dataset.
"""

from . import cifar10, mnist, svhn  # noqa: F401  (importing registers them in DATASETS)
from .errors import DataError, DatasetNotFoundError
from .imageset import ImageSet
from .load import load_dataset
from .official import DATASETS, OfficialDataset
from .sample import available_samples

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetNotFoundError",
    "ImageSet",
    "OfficialDataset",
    "available_samples",
    "load_dataset",
]
