"""``load_dataset``: find a dataset split wherever it is, check it, return an ImageSet.

Resolution, for each search folder in order (see ``locate``) and inside it the folder
itself then its ``NAME/`` subfolder, first match wins:

1. ``NAME_SPLIT.npz`` -- an explicit full split always wins;
2. the official files, MD5-checked (official datasets only);
3. ``NAME_SPLIT_*.npz`` -- a subset of the split (a warning says so).

A name with a ``/`` is a folder of PNG/JPEG images, read by
:mod:`vaeood.data.folder_dataset` (one folder is one split; ``conform`` and ``skip_bad`` apply
to it alone); a plain word never is.

If nothing is found: with ``download=True`` the official files are fetched into the
first user folder; then, with ``allow_sample=True``, the bundled sample is returned (a
warning says so); otherwise ``DatasetNotFoundError`` lists every place looked.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..infra.deprecated import renamed_keywords
from ..infra.registry import did_you_mean
from .errors import DataError, DatasetNotFoundError
from .checksums import named_sha256
from .folder_cache import CACHE_DIR
from .folder_dataset import load_image_folder
from .imageset import ImageSet
from .locate import ENV_VAR, candidate_folders, is_folder_name, refuse_broken_links, search_dirs, user_dirs
from .npz import read_image_arrays
from .official import DATASETS, OfficialDataset
from .sample import available_samples, has_sample, load_sample

log = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # names become file names: no paths


@renamed_keywords(fit="conform")  # its name until 0.2
def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 allow_sample: bool = False, *, conform: str | None = None, skip_bad: bool = False,
                 image_size: tuple[int, int] | None = None, cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """Split ``split`` of dataset ``name`` as uint8 NHWC images and int64 labels.

    Args:
        name: an official dataset (``fashion_mnist``, ``mnist``, ``cifar10``, ``svhn``) or a
            name with a ``NAME_SPLIT.npz`` file; split: ``"train"``/``"test"`` (npz: any word).
        data_dir: searched first, where downloads go (default ``$VAEOOD_DATA``, ~/.cache/vaeood).
        download: fetch missing official files from the authors' mirrors.
        allow_sample: when nothing is found, return the bundled sample (``is_sample=True``).
        conform, skip_bad: for a folder (a ``name`` with a ``/``, see
            :mod:`vaeood.data.folder_dataset`): ``"pad"``/``"resize"`` images of another
            shape than the folder's most common, and skip bad files instead of refusing the
            folder; ``image_size`` ``(H, W)``: the size to conform them to (default: the
            folder's most common; refused for a dataset, read at its own size); ``cache_dir``:
            decode it chunk by chunk into a memory-mapped file there (:mod:`vaeood.data.folder_cache`).
            A folder is one split: ``split`` is
            recorded, not used to find files; ``data_dir``, ``download`` and ``allow_sample`` do not apply to it.
    Raises:
        DataError: a file found is corrupt, of the wrong format or fails its published MD5
            (never silently skipped: a broken file must be fixed).
        DatasetNotFoundError: nothing found; the message lists where it looked and how to
            get the data.
    """
    if isinstance(name, str) and names_a_folder(name, split, data_dir):
        if not isinstance(split, str) or not _WORD.fullmatch(split):
            raise DataError(f"load_dataset: split={split!r} must be a plain word such as 'train' "
                            "(letters, digits, _ . -)")
        return load_image_folder(name, split, conform=conform, skip_bad=skip_bad, size=image_size,
                                 cache_dir=cache_dir)
    data = _load_named(name, split, data_dir, download, allow_sample)
    if image_size is not None:
        height, width = data.images.shape[1:3]
        raise DataError(f"data.image_size={list(image_size)} applies to a folder of images only; {name} ({split}) "
                        f"is a dataset of {height}×{width} images, trained at that size: remove "
                        "--data.image_size, or give a folder of images (data.name=./folder)")
    return data


def names_a_folder(name: str, split: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_dataset` reads ``name`` as a folder of images: a name with a
    ``/``, or a plain word naming a folder here (``photos`` for ``./photos``) when no dataset
    of that name is found. A word that names both is the dataset, with a warning that says so."""
    if is_folder_name(name):
        return True
    if not isinstance(name, str) or not _WORD.fullmatch(name) or not Path(name).is_dir():
        return False
    try:
        _load_named(name, split, data_dir, download=False, allow_sample=False)  # npz and official reads are cached
    except DatasetNotFoundError:
        return True
    log.warning("%r is both a dataset and a folder here: using the dataset (write ./%s for the folder)", name, name)
    return False


def _load_named(name: str, split: str, data_dir, download: bool, allow_sample: bool) -> ImageSet:
    """:func:`load_dataset` of a dataset name (not a folder): the resolution order of the
    module docstring."""
    for field, value in (("name", name), ("split", split)):
        if not isinstance(value, str) or not _WORD.fullmatch(value):
            raise DataError(f"load_dataset: {field}={value!r} must be a plain word such as "
                            f"'fashion_mnist' or 'train' (letters, digits, _ . -), or for the name a "
                            "folder path with a '/' (e.g. ./images)")
    official = DATASETS.get(name)() if name in DATASETS else None
    use_official = official if official is not None and split in official.splits else None

    looked: list[str] = []
    dirs = search_dirs(data_dir, official.system_dirs if official else ())
    for search_dir in dirs:
        for folder in candidate_folders(search_dir, name):
            found = _load_from_folder(name, split, folder, use_official)
            if found is not None:
                log.debug("loaded %s/%s: %d images %s, %s in %s", name, split, len(found),
                          found.shape, found.source, folder)
                return found
            state = "folder exists but holds none of them" if folder.is_dir() else "no such folder"
            looked.append(f"{folder}  [{search_dir.origin}]: {state}")
    if not os.environ.get(ENV_VAR, "").strip():
        # Shown where it would have been searched: after data_dir, before the cache.
        looked.insert(0 if data_dir is None else len(candidate_folders(dirs[0], name)),
                      f"${ENV_VAR}: not set")

    download_error = ""
    if download:
        if use_official is None:
            download_error = _cannot_download(name, split, official)
        else:
            target = user_dirs(data_dir)[0].path / name
            try:
                use_official.download(target, split)
            except DatasetNotFoundError as err:  # no network: maybe the sample will do
                download_error = str(err)
            else:
                return use_official.load(use_official.find(target, split), split)

    if allow_sample and has_sample(name, split):
        sample = load_sample(name, split)
        log.warning("%s/%s not found (looked in %d places%s); using the bundled sample of %d "
                    "images. Results on it are for smoke tests only. %s", name, split, len(looked),
                    "; download failed" if download_error else "", len(sample), sample.source)
        return sample
    raise DatasetNotFoundError(_not_found_message(name, split, data_dir, official, use_official,
                                                  looked, download_error))


def load_for_run(data_config, dataset: str | None = None, split: str | None = None,
                 data_dir: str | os.PathLike | None = None, *, allow_sample: bool | None = None,
                 conform: str | None = None, skip_bad: bool = False,
                 run_dir: str | os.PathLike | None = None) -> ImageSet:
    """``dataset/split`` (default: the run's training split) as a run reads it. The run's
    own training split is read with the run's ``data.conform`` and ``data.skip_bad``, so that
    a folder gives the images, order and count that training saw (and held out); any other
    folder with ``conform`` (scoring's ``--pad``/``--resize``) and its bad files refused unless ``skip_bad``
    (``--skip-bad``).
    ``data_config``: the run's :class:`~vaeood.training.config.DataConfig`, or None. ``run_dir``:
    a folder is decoded into ``RUN/cache/``, memory-mapped (:mod:`vaeood.data.folder_cache`)."""
    dataset = dataset if dataset is not None else data_config.name
    split = split if split is not None else data_config.split
    allow = data_config.allow_sample if allow_sample is None and data_config is not None else bool(allow_sample)
    own = data_config is not None and (dataset, split) == (data_config.name, data_config.split)
    return load_dataset(dataset, split, data_dir=data_dir, allow_sample=allow,
                        conform=data_config.conform if own else conform,
                        skip_bad=data_config.skip_bad if own else skip_bad,
                        image_size=data_config.image_size if own else None,
                        cache_dir=Path(run_dir) / CACHE_DIR if run_dir is not None else None)


def _load_from_folder(name: str, split: str, folder: Path,
                      official: OfficialDataset | None) -> ImageSet | None:
    """Load ``name``/``split`` from one folder following the resolution order, or None."""
    if not folder.is_dir():
        return None
    exact = folder / f"{name}_{split}.npz"
    refuse_broken_links(folder, [exact.name, *(official.files[split] if official else ())], f"{name}_{split}_")
    if exact.is_file():
        return _load_npz(exact, name, split)
    if official is not None:
        hit = official.find(folder, split)
        if hit is not None:
            return official.load(hit, split)
    prefix = f"{name}_{split}_"
    subsets = sorted(p for p in folder.glob(glob.escape(prefix) + "*.npz") if p.is_file())
    if subsets:
        chosen = subsets[0]
        subset = chosen.name[len(prefix):-len(".npz")]
        others = f" (also present: {', '.join(p.name for p in subsets[1:])})" if subsets[1:] else ""
        log.warning("%s/%s: using %s, a subset (%r) of the split, not the full split%s",
                    name, split, chosen, subset, others)
        return _load_npz(chosen, name, split, subset)
    return None


def _load_npz(path: Path, name: str, split: str, subset: str | None = None) -> ImageSet:
    st = path.stat()
    images, labels, provenance, files = _read_npz(str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    source = path.name
    if subset is not None:
        source += f" (subset {subset!r} of {name} {split}, not the full split)"
    if provenance:
        source += f"; {provenance}"
    return ImageSet(name, split, _read_only(images), labels.copy(), source=source, files=files)


def _read_only(images: np.ndarray) -> np.ndarray:
    """A read-only view of the arrays read once per process, not a copy: an experiment loads
    CIFAR-10's 150 MB training split 133 times a seed of the ood-suite, and copying it cost 41 s
    of 190. A caller that changes images makes its own copy (writing to this view raises). The
    view keeps the strides of a fresh read: grey images keep the 0 stride of their added
    channel axis, which decides the memory format torch's convolutions choose."""
    view = images.view()
    view.flags.writeable = False
    return view


@functools.lru_cache(maxsize=8)
def _read_npz(path: str, size: int, mtime_ns: int, inode: int):
    """The checked arrays and digest of one npz file, read once per process while the file
    is unchanged (same size, modification time and inode): an experiment loads the same
    splits hundreds of times, and decompressing and hashing them cost a minute a run."""
    return (*read_image_arrays(path, path), named_sha256(path))


def _cannot_download(name: str, split: str, official: OfficialDataset | None) -> str:
    if official is None:
        return (f"{name!r} has no official files to download{did_you_mean(name, DATASETS)}; "
                f"downloadable datasets: {', '.join(DATASETS)}")
    return f"official {official.title} files provide splits {', '.join(official.splits)}, not {split!r}"


def _not_found_message(name, split, data_dir, official, use_official, looked, download_error) -> str:
    patterns = [f"{name}_{split}.npz"]
    if use_official is not None:
        patterns.append(use_official.expected(split))
    patterns.append(f"{name}_{split}_*.npz")
    lines = [f"dataset {name!r} split {split!r} not found. Looked for "
             f"{' / '.join(patterns)} in:"]
    lines += [f"  - {entry}" for entry in looked]
    if official is None:
        samples = sorted({n for n, _ in available_samples()})
        lines.append(f"{name!r} is not an official dataset{did_you_mean(name, [*DATASETS, *samples])}; "
                     f"the official ones are {', '.join(DATASETS)}. Other names load only from "
                     f"{name}_{split}.npz files.")
    elif use_official is None:
        lines.append(f"The official {official.title} files provide splits "
                     f"{', '.join(official.splits)}; split {split!r} can only come from an npz file.")
    if download_error:
        lines.append(f"Download failed: {download_error}")
    lines.append("To get it:")
    target = user_dirs(data_dir)[0].path / name
    if use_official is not None and not download_error:
        lines.append(f"  - with internet access: pass --download (download=True) to fetch "
                     f"{', '.join(use_official.files[split])} from {use_official.mirrors[0]} "
                     f"into {target}")
    if use_official is not None:
        lines.append(f"  - offline: copy the official files ({use_official.expected(split)}) into "
                     f"--data-dir or ${ENV_VAR} (or their {name}/ subfolder)")
        lines += [f"  - {hint}" for hint in use_official.hints]
    lines.append(f"  - save arrays x (uint8 [N, H, W] or [N, H, W, C]) and y (int labels [N]) as "
                 f"{name}_{split}.npz in --data-dir or ${ENV_VAR}")
    if has_sample(name, split):
        lines.append("  - for a quick offline try: allow_sample=True (config --data.allow_sample=true) "
                     "uses the small bundled sample (not the real dataset)")
    return "\n".join(lines)
