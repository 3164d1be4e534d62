"""Whether a labelled file's classes are mixed across a first-images/last-images split.

``vaeood fit`` trains on a source's first images and holds out its last ones to fit and
calibrate the detector (:mod:`vaeood.pipeline`). A file sorted by class (or by camera, by
date) then calibrates on its end alone, and the false-alarm guarantee holds only for images
like those: no error, and a threshold that says nothing of the other classes. A folder's
images are in a hash order (:mod:`vaeood.data.folder_dataset`) and an array given to
:class:`vaeood.ImageOODDetector` is stored in one (:func:`vaeood.image_arrays.hash_order`);
a dataset file's order is its own, so it is tested: a χ² test of independence between the
class and the part of the split (Pearson 1900), with a p-value that a file in random order
falls below with probability ``MIXED_P``, on the classes expected at least once in every part
(the test's approximation needs it; labels that are image ids are not tested).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency

#: the test's level: a file in random order is called sorted once in a million fits
MIXED_P = 1e-6


def unmixed_split(labels: np.ndarray, parts: dict[str, tuple[int, int]]) -> str | None:
    """None where the classes of ``labels`` are mixed across ``parts`` (``{name: (start,
    stop)}``), else what differs: the classes missing from a part, or the χ² p-value."""
    labels = np.asarray(labels)
    classes = np.unique(np.concatenate([labels[a:b] for a, b in parts.values()]))
    table = np.stack([np.bincount(np.searchsorted(classes, labels[a:b]), minlength=len(classes))
                      for a, b in parts.values()])
    if (table.sum(1) == 0).any():
        return None  # an empty part: nothing to compare
    # χ² needs expected counts of about one or more: a class too small to be in every part by chance
    # (labels that are image ids, rare classes) is left out of the test
    tested = (np.outer(table.sum(1), table.sum(0)) / table.sum()).min(0) >= 1
    classes, table = classes[tested], table[:, tested]
    if len(classes) < 2:
        return None  # unlabelled (one label), or no class large enough to test
    p = chi2_contingency(table)[1]
    if p >= MIXED_P:
        return None
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    missing = [f"{name}: no image of {_classes(gone)}" for name, row, want in zip(parts, table, expected, strict=True)
               if (gone := [int(c) for c, k, e in zip(classes, row, want, strict=True) if k == 0 and e >= 5])]
    return "; ".join(missing) if missing else f"the class shares differ between the parts (χ² p = {p:.1g})"


def _classes(gone: list[int], shown: int = 10) -> str:
    """``class 3``, ``classes 8, 9``, or the first ``shown`` of many and their count."""
    if len(gone) == 1:
        return f"class {gone[0]}"
    more = f" … ({len(gone)} classes)" if len(gone) > shown else ""
    return "classes " + ", ".join(map(str, gone[:shown])) + more
