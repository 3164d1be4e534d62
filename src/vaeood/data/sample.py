"""The bundled offline sample: small stratified subsets of Fashion-MNIST and MNIST.

It ships inside the package (``vaeood/data/sample/NAME_SPLIT.npz``) so that demos and
tests run on a machine with no data and no network. It is *not* the dataset: results on
it are marked ``is_sample=True`` and every use logs a warning. How it was made, and the
licences, are in ``sample/README.md``; ``scripts/make_sample.py`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import logging
from importlib import resources

from .imageset import ImageSet
from .npz import read_image_arrays

log = logging.getLogger(__name__)


def _sample_dir():
    # importlib.resources works from a wheel, a zip or a source checkout alike.
    return resources.files(__package__) / "sample"


def available_samples() -> list[tuple[str, str]]:
    """``(name, split)`` pairs that have a bundled sample, sorted."""
    found = []
    for entry in _sample_dir().iterdir():
        stem, dot, ext = entry.name.rpartition(".")
        name, _, split = stem.rpartition("_")
        if dot and ext == "npz" and name:
            found.append((name, split))
    return sorted(found)


def has_sample(name: str, split: str) -> bool:
    return (name, split) in available_samples()


def load_sample(name: str, split: str) -> ImageSet:
    """Load the bundled sample of ``name``/``split`` (see ``available_samples``)."""
    resource = _sample_dir() / f"{name}_{split}.npz"
    where = f"bundled sample vaeood/data/sample/{resource.name}"
    raw = resource.read_bytes()  # a wheel may hold it in a zip: read bytes, not a path
    images, labels, provenance = read_image_arrays(io.BytesIO(raw), where)
    source = f"bundled sample: {provenance or resource.name}"
    return ImageSet(name, split, images, labels, source=source, is_sample=True,
                    files=((resource.name, hashlib.sha256(raw).hexdigest()),))
