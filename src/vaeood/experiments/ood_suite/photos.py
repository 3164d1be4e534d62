"""A family of real photos read from a folder (Tiny ImageNet's ``tinyimagenet64/``), written as
the suite's image sets.

The folder, found in the data dir (``--data-dir``, ``$VAEOOD_DATA``, the user cache), holds
``train/<wnid>/`` (the photos of the training classes), ``val/<wnid>/`` (photos of those
classes and of others) and optionally ``classes.tsv`` (wnid, words, in_train). It gives, in
``OUT/runs/data/<family>/``:

- ``<family>_train.npz``: every ``train/`` photo, in the folder reader's fixed order (the
  SHA-256 of each relative file name, so training and held-out photos mix the classes);
  labels 0..K−1, the training classes in name order;
- ``<family>_test.npz``: the ``val/`` photos of the training classes (in-distribution);
- ``<family>_other_test.npz``: ``limit`` ``val/`` photos of the other classes (near-OOD),
  drawn without replacement with the fixed seed :data:`NEAR_SAMPLE_SEED` from the file list
  alone, never from any score; labels K + the class's index among the other classes.

Grey photos (mode L) become RGB by repeating their channel (the folder reader's mode rule,
:mod:`vaeood.data.decode`): how many, per folder, is recorded, and the
grey photos (R = G = B in every pixel) of each written set are counted. Provenance is names
and SHA-256 digests (of the folder's names and bytes, and of each set's pixels), never the
folder's path.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...data.checksums import file_hexdigest
from ...data.errors import DataError
from ...data.folder_dataset import load_image_folder
from ...data.locate import user_dirs
from ...features import images_digest
from ..common import write_image_set
from .presets import SYNTHETIC_SEED, Family

NEAR_SAMPLE_SEED = SYNTHETIC_SEED + 1  # the near-OOD sample of other classes' photos


def find_photos(fam: Family, data_dir: str | None) -> Path | None:
    """The family's photo folder (with ``train/`` and ``val/``) in the first data dir that
    has it, or None."""
    for d in user_dirs(data_dir):
        folder = d.path / fam.photos
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    return None


def write_photo_sets(fam: Family, src: Path, dest: Path, limit: int | None) -> dict:
    """Write the family's three sets (module docstring) from the photo folder ``src`` into
    ``dest``; their record: per set its size, source, grey photos and pixels' SHA-256, the
    classes (with ``classes.tsv``'s words) and how many grey photos were made RGB."""
    train = load_image_folder(src / "train", "train", conform="resize")
    val = load_image_folder(src / "val", "test", conform="resize")
    classes = list(train.folder["classes"])
    _check_shapes(fam, train, val, classes)
    (in_rows, in_labels), (near_rows, near_labels), n_other, others = _split_val(val, classes, limit)
    where, words = f"{src.name}/", _words(src / "classes.tsv")
    sets = {
        f"{fam.name}/train": (train.images, train.labels,
                              f"{where}train/: all {len(train.images)} photos of {len(classes)} classes"
                              f" ({_digest(train)})"),
        f"{fam.name}/test": (val.images[in_rows], in_labels,
                             f"{where}val/: the {len(in_rows)} photos of the {len(classes)} training classes "
                             f"({_digest(val)})"),
        f"{fam.near[0]}/test": (val.images[near_rows], near_labels,
                                f"{where}val/: {len(near_rows)} of the {n_other} photos of {len(others)} other "
                                f"classes, drawn with seed {NEAR_SAMPLE_SEED} from the folder's order "
                                f"({_digest(val)})"),
    }
    record = {"folder": src.name, "classes": [{"wnid": c, "words": words.get(c, "")} for c in classes],
              "other_classes": len(others), "near_sample_seed": NEAR_SAMPLE_SEED,
              "classes_tsv_sha256": file_hexdigest(src / "classes.tsv", "sha256") if words else None,
              "grey_to_rgb": {"train": _converted(train), "val": _converted(val)}, "sets": {}}
    for key, (x, y, source) in sets.items():
        name, split = key.split("/")
        grey = int(np.all(x == x[..., :1], axis=(1, 2, 3)).sum())
        provenance = f"{source}; {grey} grey photos, made RGB by repeating the channel"
        write_image_set(dest / f"{name}_{split}.npz", x, provenance, labels=y)
        record["sets"][key] = {"n": int(len(x)), "source": provenance, "grey": grey, "is_sample": False,
                               "pixels_sha256": images_digest(x)}
    return record


def _split_val(val, classes: list[str], limit: int | None):
    """The ``val/`` rows of the training classes with their labels (the class's index among
    ``classes``); the drawn rows of the other classes with theirs (K + the class's index among
    the others); how many photos the others have; the other classes' names."""
    val_classes = val.folder["classes"]
    others = [c for c in val_classes if c not in classes]
    names = np.asarray(val_classes)[val.labels]
    in_rows = np.flatnonzero(np.isin(names, classes))
    other_rows = np.flatnonzero(~np.isin(names, classes))
    n_near = len(other_rows) if limit is None else min(limit, len(other_rows))
    drawn = np.sort(np.random.default_rng(NEAR_SAMPLE_SEED).choice(len(other_rows), n_near, replace=False))
    near_rows = other_rows[drawn]
    in_labels = np.array([classes.index(c) for c in names[in_rows]], dtype=np.int64)
    near_labels = np.array([len(classes) + others.index(c) for c in names[near_rows]], dtype=np.int64)
    return (in_rows, in_labels), (near_rows, near_labels), len(other_rows), others


def _check_shapes(fam: Family, train, val, classes: list[str]) -> None:
    want = (fam.shape[1], fam.shape[2], fam.shape[0])
    for d in (train, val):
        if d.images.shape[1:] != want:
            raise DataError(f"{d.name}/: photos of {'×'.join(map(str, d.images.shape[1:]))} (H×W×C), the "
                            f"{fam.title} family expects {'×'.join(map(str, want))}")
    missing = [c for c in classes if c not in val.folder["classes"]]
    if missing:
        raise DataError(f"{fam.photos}/val/ has no folder for the training classes {', '.join(missing)}")


def _words(path: Path) -> dict[str, str]:
    """wnid → words from ``classes.tsv`` (empty when the file is absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["wnid"]: row.get("words", "") for row in csv.DictReader(f, delimiter="\t")}


def _digest(d) -> str:
    return f"SHA-256 of names and bytes {d.folder['sha256']}"


def _converted(d) -> int:
    return int(d.folder["converted"].get("grey → RGB", 0))
