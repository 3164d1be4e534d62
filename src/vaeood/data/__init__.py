"""Datasets for vaeood: official files (MD5-checked), any npz, folders of PNG/JPEG images and an
offline sample.

Every loader returns an :class:`ImageSet`: uint8 images ``[N, H, W, C]`` (always with a
channel axis) and int64 labels ``[N]``, plus where they came from::

    from vaeood.data import load_dataset
    train = load_dataset("fashion_mnist", "train", data_dir="data/")
    train.images.shape   # (60000, 28, 28, 1)

Reading images, one module per step:

1. find where a named source is: ``locate.py`` (a folder, an ``.npz`` file or a dataset
   name; the folders searched for a dataset);
2. list its files: ``listing.py`` (regular PNG/JPEG files only, hidden and special files
   left out, class subfolders, then the header pass: each image's size and mode without
   decoding it);
3. decode and convert one image: ``decode.py`` (8-bit grey or RGB, EXIF orientation,
   the run's mode; ``decode_into`` decodes a folder's images into one array);
4. conform it to the run: ``conform.py`` (the target shape, pad or resize, recorded), at
   the working size ``working_size.py`` chooses for a folder of photos.

The readers that assemble these: ``load.py`` (``load_dataset``, ``load_for_run``: a dataset
split, from an npz file, the official files of ``official.py``, which says how to add a dataset, or a folder),
``folder_dataset.py`` (a folder as a dataset split, decoded in memory or into a run's
``cache/`` by ``folder_cache.py``) and ``inputs.py`` (the images to score: ``load_input``, a
folder streamed in chunks). ``npz.py`` gives the format of any other dataset;
``regular_files.py`` is how every reader opens a user's file (never a FIFO or device).
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
