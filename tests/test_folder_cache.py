"""A folder decoded chunk by chunk into a memory-mapped file of the run (vaeood.data.folder_cache):
the same pixels, labels, order and provenance as the folder read into memory, reused while the
folder is unchanged, and training from it gives the same weights as training from the array."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tinydata import blobs, strokes
from vaeood.data import folder_cache, folder_dataset
from vaeood.data.folder_dataset import load_image_folder
from vaeood.training.checkpoint import load_checkpoint
from vaeood.training.run import MappedImages, to_tensor


def _folder(tmp_path):
    folder = tmp_path / "photos"
    for cls, images in (("round", blobs(30, 0)), ("lines", strokes(30, 1))):
        (folder / cls).mkdir(parents=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / cls / f"{i:02d}.png")
    big = np.kron(blobs(1, 5)[0], np.ones((2, 2), np.uint8))  # another size: resized to the working one
    Image.fromarray(big).save(folder / "round" / "big.png")
    return folder


def test_a_folder_decoded_to_disk_is_the_folder_read_into_memory_and_is_reused(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    monkeypatch.setattr(folder_cache, "CHUNK", 7)  # several chunks, the last one short
    cache = tmp_path / "run" / "cache"
    mapped = load_image_folder(folder, "train", conform="resize", cache_dir=cache)
    in_memory = load_image_folder(folder, "train", conform="resize")
    assert isinstance(mapped.images, np.memmap) and not isinstance(in_memory.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, in_memory.images)
    np.testing.assert_array_equal(mapped.labels, in_memory.labels)
    assert mapped.source == in_memory.source and mapped.folder == in_memory.folder
    assert mapped.folder["conform"]["changed"] == 1 and len(mapped) == 61

    (array,) = cache.glob("*.npy")
    written = array.stat().st_mtime_ns
    assert load_image_folder(folder, "train", conform="resize", cache_dir=cache).images is mapped.images  # the map
    folder_dataset._CACHE.clear()  # a new process: the file on disk is reused, no file of the folder opened
    with monkeypatch.context() as m:
        m.setattr(folder_dataset, "read_headers", lambda entries: pytest.fail("an unchanged folder was read again"))
        again = load_image_folder(folder, "train", conform="resize", cache_dir=cache)
    assert array.stat().st_mtime_ns == written and again.folder == mapped.folder  # reused, not decoded again
    assert again.source == mapped.source and again.files == mapped.files
    np.testing.assert_array_equal(again.images, in_memory.images)
    np.testing.assert_array_equal(again.labels, in_memory.labels)

    Image.fromarray(255 - blobs(1, 0)[0]).save(folder / "round" / "00.png")  # one file changes: decoded afresh
    changed = load_image_folder(folder, "train", conform="resize", cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2 and changed.folder["sha256"] != mapped.folder["sha256"]
    np.testing.assert_array_equal(changed.images, load_image_folder(folder, "train", conform="resize").images)


def test_mapped_batches_are_the_batches_of_the_array_in_memory(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = MappedImages(np.load(tmp_path / "x.npy", mmap_mode="r"))
    index = torch.tensor([7, 3, 49, 0, 3])
    batch, expected = mapped[index], to_tensor(images)[index]
    assert mapped.shape == (50, 3, 6, 5) and len(mapped) == 50
    assert torch.equal(batch, expected) and batch.stride() == expected.stride() and batch.is_contiguous()


@pytest.mark.slow  # trains two small models
def test_training_from_the_mapped_folder_gives_the_weights_of_the_array(tmp_path, monkeypatch):
    from vaeood.cli import main

    folder = _folder(tmp_path)
    mlp = ["--train.epochs=1", "--model.arch=mlp", "--model.hidden_dim=32", "--model.latent_dim=4",
           "--train.batch_size=16", f"--data.name={folder}", "--data.conform=resize"]
    assert main(["train", str(tmp_path / "mapped"), *mlp]) == 0
    assert len(list((tmp_path / "mapped" / "cache").glob("*.npy"))) == 1
    import vaeood.training.train as train_module

    read = train_module.load_for_run  # without run_dir: the folder is read into one array in memory
    monkeypatch.setattr(train_module, "load_for_run", lambda *args, run_dir=None, **kw: read(*args, **kw))
    assert main(["train", str(tmp_path / "memory"), *mlp]) == 0
    assert not (tmp_path / "memory" / "cache").exists()
    a, b = (load_checkpoint(tmp_path / name)["model"] for name in ("mapped", "memory"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_mapped_array_is_digested_and_summarised_in_parts_as_the_array_in_memory(tmp_path):
    import hashlib

    from vaeood.features import images_digest, pixel_stats

    images = np.random.default_rng(1).integers(0, 256, (5000, 4, 3, 3), dtype=np.uint8)  # three parts of 2,048
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    whole = hashlib.sha256(repr((images.shape, "uint8")).encode() + images.tobytes()).hexdigest()
    assert images_digest(mapped) == images_digest(images) == whole
    x = images / 255.0
    summary = pixel_stats(mapped)
    np.testing.assert_allclose([summary["pixel_mean"], summary["pixel_var"]], [x.mean(), x.var()], rtol=1e-12)


def test_a_decoded_copy_damaged_since_is_decoded_again(tmp_path):
    folder, cache = _folder(tmp_path), tmp_path / "run" / "cache"
    first = load_image_folder(folder, "train", conform="resize", cache_dir=cache)
    expected = np.array(first.images)
    (array,) = cache.glob("*.npy")
    (state,) = cache.glob("state-*.json")
    for damage in (lambda: state.write_text("{not json"), lambda: os.truncate(array, 1000)):
        damage()
        folder_dataset._CACHE.clear()  # a new process
        again = load_image_folder(folder, "train", conform="resize", cache_dir=cache)
        np.testing.assert_array_equal(again.images, expected)
        assert again.folder == first.folder
