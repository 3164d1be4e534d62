#!/usr/bin/env python
"""Build the bundled offline sample in src/vaeood/data/sample/ from the real data.

Usage:
    python scripts/make_sample.py /path/to/data      # folder with fashion_mnist_train.npz, ...

The source folder holds the full splits as ``NAME_SPLIT.npz`` (arrays ``x``, ``y``).
From each split a stratified random subset is drawn -- the same number of images per
class, chosen with a fixed seed, kept in the official order -- and written with
``np.savez_compressed`` together with ``index`` (positions in the official split) and
a ``provenance`` string that ``vaeood.data`` reports as the ImageSet's source. The
README with provenance and licences is regenerated too.

The output is byte-for-byte reproducible: same inputs, same files (zip timestamps are
fixed), so a re-run shows no diff in git.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 0
OUT = Path(__file__).resolve().parent.parent / "src" / "vaeood" / "data" / "sample"
MAX_TOTAL_BYTES = 3_000_000  # keeps the wheel small; shrink the train splits if exceeded

DATASETS = {
    "fashion_mnist": ("Fashion-MNIST", "© Zalando SE, MIT licence",
                      "https://github.com/zalandoresearch/fashion-mnist"),
    "mnist": ("MNIST", "© Yann LeCun and Corinna Cortes, CC BY-SA 3.0 licence",
              "http://yann.lecun.com/exdb/mnist/"),
}
# (name, split) -> images per class (10 classes each)
PER_CLASS = {
    ("fashion_mnist", "train"): 300,
    ("fashion_mnist", "test"): 100,
    ("mnist", "train"): 100,
    ("mnist", "test"): 100,
}
SPLIT_WORDS = {"train": "training set", "test": "test set"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random positions of each class, returned in ascending order.

    Random keys from PCG64 + a stable argsort rather than ``Generator.choice``: the raw
    uniform stream is the part of NumPy's RNG most stable across versions.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            sys.exit(f"class {c} has only {len(members)} images, {per_class} requested")
        keys = rng.random(len(members))
        chosen.append(members[np.argsort(keys, kind="stable")[:per_class]])
    return np.sort(np.concatenate(chosen))


def save_reproducible_npz(path: Path, **arrays: np.ndarray) -> bytes:
    """``np.savez_compressed``, then re-zip with a fixed timestamp so bytes are stable."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, src.read(info), compresslevel=9)
    path.write_bytes(out.getvalue())
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder holding NAME_SPLIT.npz files")
    args = parser.parse_args()

    rows, total = [], 0
    for (name, split), per_class in PER_CLASS.items():
        title, licence, _ = DATASETS[name]
        src_path = args.data_dir / f"{name}_{split}.npz"
        raw = src_path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"].astype(np.int64)
        if x.dtype != np.uint8 or x.ndim != 3:
            sys.exit(f"{src_path}: expected uint8 [N, H, W] images, found {x.dtype} {x.shape}")
        index = stratified_indices(y, per_class, SEED)
        n = len(index)
        provenance = (f"random {n:,} images ({per_class} per class, seed {SEED}) of the "
                      f"{len(y):,}-image {title} {SPLIT_WORDS[split]} ({title} {licence})")
        data = save_reproducible_npz(OUT / f"{name}_{split}.npz", x=x[index], y=y[index],
                                     index=index, provenance=np.array(provenance))
        total += len(data)
        rows.append(f"| {name}_{split}.npz | {n:,} | {per_class} | {len(data):,} | "
                    f"{src_path.name} ({len(y):,} images, sha256 `{sha256(raw)[:16]}…`) |")
        print(f"{name}_{split}.npz: {n} images, {len(data):,} bytes")
    if total > MAX_TOTAL_BYTES:
        sys.exit(f"sample is {total:,} bytes > {MAX_TOTAL_BYTES:,}; lower PER_CLASS for a train split")
    print(f"total {total:,} bytes")
    (OUT / "README.md").write_text(readme(rows, total), encoding="utf-8")


def readme(rows: list[str], total: int) -> str:
    licences = "\n".join(f"- **{title}** ({url}): {licence}." for title, licence, url in DATASETS.values())
    return f"""# Bundled offline sample

Small stratified subsets of real Fashion-MNIST and MNIST images, shipped inside the
package so that demos and tests run with no data and no network:
`load_dataset(name, split, allow_sample=True)` falls back to them (with a warning and
`is_sample=True`) when the real files are not found. They are **not** the datasets:
never report results on them as results on Fashion-MNIST or MNIST.

| file | images | per class | bytes | drawn from |
|---|---|---|---|---|
{chr(10).join(rows)}

Total: {total:,} bytes.

## How it was made

`python scripts/make_sample.py /path/to/data`, where the folder holds the full splits
as `NAME_SPLIT.npz` (arrays `x` uint8 `[N, 28, 28]`, `y` int64, rows in the official
order, pixels as in the official IDX files; the sha256 of each source is listed above,
abbreviated). For each split, the given number of images per class is drawn uniformly
at random without replacement (NumPy PCG64, seed {SEED}, stable argsort of uniform
keys) and kept in official order.
Each file holds `x` (uint8 `[N, 28, 28]`), `y` (int64 `[N]`), `index` (each image's
position in the official split) and `provenance` (the text reported as the source).
The script is deterministic: re-running it reproduces these files byte for byte.

## Licences

{licences}

The images are redistributed unmodified under these licences; the subset is a
derivative of the datasets and carries the same terms.
"""


if __name__ == "__main__":
    main()
