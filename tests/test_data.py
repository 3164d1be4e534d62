"""Tests of vaeood.data with known answers and no network.

Every official format is exercised on small files written here (IDX gz, CIFAR python
batches as a folder and as tar.gz, SVHN .mat, npz), with known pixel values that the
loader must return exactly. The published MD5 tables are monkeypatched to the MD5 of
the fake files, so the integrity check runs for real. Downloads go to a local HTTP
server on 127.0.0.1. Only ``test_real_data_via_env`` reads real data, and only when
``$VAEOOD_DATA`` is set (e.g. to ../shared/data).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import logging
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from vaeood.data import DATASETS, DataError, DatasetNotFoundError, ImageSet, load_dataset
from vaeood.data.cifar10 import CIFAR10
from vaeood.data.mnist import MNIST, FashionMNIST
from vaeood.data.svhn import SVHN

REAL_DATA = os.environ.get("VAEOOD_DATA")  # read before the isolation fixture clears it
rng = np.random.default_rng(1234)


# --------------------------------------------------------------------------- helpers
def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def patch_md5(monkeypatch, cls, **files: bytes) -> None:
    """Make ``cls`` trust exactly these fake files (name -> bytes)."""
    table = dict(cls.md5)
    table.update({name: md5(data) for name, data in files.items()})
    monkeypatch.setattr(cls, "md5", table)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array in IDX (big-endian header), gzip-compressed."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_idx_split(folder: Path, split: str, images, labels, images_magic=None, labels_magic=None) -> dict[str, bytes]:
    prefix = "train" if split == "train" else "t10k"
    files = {
        f"{prefix}-images-idx3-ubyte.gz": idx_bytes(images, images_magic),
        f"{prefix}-labels-idx1-ubyte.gz": idx_bytes(labels, labels_magic),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def grey(n: int, h: int = 28, w: int = 28) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def cifar_batch(rows: np.ndarray, labels, module: str = "numpy.core.multiarray") -> bytes:
    """A batch pickled as the official (Python 2, numpy 1.x) files are: protocol 2,
    the pixel buffer as a latin-1 string, arrays rebuilt by ``module._reconstruct``."""
    from numpy._core.multiarray import _reconstruct

    class Py2Style(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is np.ndarray:
                state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
                return _reconstruct, (np.ndarray, (0,), "b"), state
            return NotImplemented

    buf = io.BytesIO()
    Py2Style(buf, protocol=2).dump({"batch_label": "fake", "labels": list(map(int, labels)),
                                    "data": rows, "filenames": []})
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", f"c{module}\n".encode())


def cifar_files(n_per_batch: int = 2, module: str = "numpy.core.multiarray"):
    """Fake batches: name -> (bytes, NHWC images, labels)."""
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch)
        rows = images.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)  # R plane, G, B
        out[name] = (cifar_batch(rows, labels, module), images, labels)
    return out


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the user's data: no $VAEOOD_DATA, a fresh HOME, a fake system dir."""
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(FashionMNIST, "system_dirs", ((str(tmp_path / "sys-fmnist"), "test system dir"),))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- IDX
def test_fashion_mnist_idx_in_dataset_subfolder(tmp_path, monkeypatch):
    images, labels = grey(5)
    files = write_idx_split(tmp_path / "data" / "fashion_mnist", "test", images, labels)
    patch_md5(monkeypatch, FashionMNIST, **files)

    got = load_dataset("fashion_mnist", "test", data_dir=tmp_path / "data")

    assert isinstance(got, ImageSet) and not got.is_sample
    assert got.images.dtype == np.uint8 and got.images.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got.images, images[..., None])
    np.testing.assert_array_equal(got.labels, labels)
    assert got.labels.dtype == np.int64
    assert (len(got), got.shape, got.name, got.split) == (5, (28, 28, 1), "fashion_mnist", "test")
    assert "t10k-images-idx3-ubyte.gz" in got.source


def test_provenance_names_files_and_digests_never_paths(tmp_path, monkeypatch):
    """Results record a dataset by name, split, file names and SHA-256: where it sat on
    this machine must not leak into them."""
    import hashlib

    images, labels = grey(5)
    files = write_idx_split(tmp_path / "data" / "fashion_mnist", "test", images, labels)
    patch_md5(monkeypatch, FashionMNIST, **files)
    got = load_dataset("fashion_mnist", "test", data_dir=tmp_path / "data").provenance()
    folder = tmp_path / "data" / "fashion_mnist"
    assert got["files"] == [{"name": f, "sha256": hashlib.sha256((folder / f).read_bytes()).hexdigest()}
                            for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    assert str(tmp_path) not in repr(got) and (got["dataset"], got["split"]) == ("fashion_mnist", "test")


def test_mnist_idx_directly_in_data_dir_via_env(tmp_path, monkeypatch):
    images, labels = grey(3, 4, 5)  # non-square: catches H/W mix-ups
    files = write_idx_split(tmp_path, "train", images, labels)
    patch_md5(monkeypatch, MNIST, **files)
    monkeypatch.setenv("VAEOOD_DATA", str(tmp_path))

    got = load_dataset("mnist", "train")
    np.testing.assert_array_equal(got.images[..., 0], images)
    assert got.shape == (4, 5, 1)


def test_fashion_mnist_found_in_system_dir(tmp_path, monkeypatch):
    images, labels = grey(2)
    files = write_idx_split(tmp_path / "sys-fmnist", "train", images, labels)
    patch_md5(monkeypatch, FashionMNIST, **files)
    np.testing.assert_array_equal(load_dataset("fashion_mnist", "train").labels, labels)


def test_md5_mismatch_names_file_and_both_sums(tmp_path):
    write_idx_split(tmp_path, "test", *grey(2))  # MD5 table not patched: official sums
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", "test", data_dir=tmp_path)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg
    assert FashionMNIST.md5["t10k-images-idx3-ubyte.gz"] in msg
    assert md5((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()) in msg
    assert "download" in msg.lower()


def test_md5_mismatch_recognises_the_other_datasets_file(tmp_path, monkeypatch):
    files = write_idx_split(tmp_path, "test", *grey(2))
    patch_md5(monkeypatch, MNIST, **files)  # these are "MNIST's" files...
    with pytest.raises(DataError, match="MNIST's t10k-images-idx3-ubyte.gz.*own subfolder"):
        load_dataset("fashion_mnist", "test", data_dir=tmp_path)  # ...asked for as Fashion-MNIST


def test_truncated_gzip_is_reported(tmp_path, monkeypatch):
    files = write_idx_split(tmp_path, "test", *grey(4))
    name = "t10k-images-idx3-ubyte.gz"
    files[name] = files[name][: len(files[name]) // 2]
    (tmp_path / name).write_bytes(files[name])
    patch_md5(monkeypatch, MNIST, **files)
    with pytest.raises(DataError, match=f"{name}: not a valid gzip file.*truncated"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_wrong_idx_magic_is_reported(tmp_path, monkeypatch):
    files = write_idx_split(tmp_path, "test", *grey(2), labels_magic=2051)
    patch_md5(monkeypatch, MNIST, **files)
    pattern = r"t10k-labels-idx1-ubyte.gz: IDX magic number is 2051.*expected magic number 2049"
    with pytest.raises(DataError, match=pattern):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_idx_shorter_than_its_header_says(tmp_path, monkeypatch):
    files = write_idx_split(tmp_path, "test", *grey(3))
    name = "t10k-images-idx3-ubyte.gz"
    files[name] = gzip.compress(gzip.decompress(files[name])[:-10], mtime=0)  # valid gzip, short data
    (tmp_path / name).write_bytes(files[name])
    patch_md5(monkeypatch, MNIST, **files)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: IDX header declares shape"):
        load_dataset("mnist", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10
def test_cifar10_row_layout_is_red_then_green_then_blue(tmp_path, monkeypatch):
    rows = rng.integers(0, 256, (1, 3072), dtype=np.uint8)
    data = cifar_batch(rows, [7])
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(data)
    patch_md5(monkeypatch, CIFAR10, test_batch=data)

    img = load_dataset("cifar10", "test", data_dir=tmp_path).images[0]
    # Known answers from the format: row = 1024 red, then green, then blue, row-major.
    assert img[0, 0, 0] == rows[0, 0] and img[0, 1, 0] == rows[0, 1]
    assert img[1, 0, 0] == rows[0, 32] and img[0, 0, 1] == rows[0, 1024]
    assert img[31, 31, 2] == rows[0, 3071]


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar10_extracted_folder(tmp_path, monkeypatch, module):
    batches = cifar_files(module=module)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, _, _) in batches.items():
        (folder / name).write_bytes(data)
    patch_md5(monkeypatch, CIFAR10, **{n: d for n, (d, _, _) in batches.items()})

    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    expected = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(train.labels, np.concatenate([batches[f"data_batch_{i}"][2] for i in range(1, 6)]))
    assert train.images.shape == (10, 32, 32, 3) and train.images.flags["C_CONTIGUOUS"]


def test_cifar10_read_from_tar_gz_without_extracting(tmp_path, monkeypatch):
    batches = cifar_files()
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, (data, _, _) in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    patch_md5(monkeypatch, CIFAR10, **{n: d for n, (d, _, _) in batches.items()},
              **{"cifar-10-python.tar.gz": archive.read_bytes()})

    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(test.images, batches["test_batch"][1])
    np.testing.assert_array_equal(test.labels, batches["test_batch"][2])
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-python.tar.gz"]  # nothing extracted


def test_cifar10_pickle_with_forbidden_global_is_refused_unrun(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps({"data": Evil(), "labels": []}, protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(data)
    patch_md5(monkeypatch, CIFAR10, test_batch=data)
    with pytest.raises(DataError, match=r"test_batch: the pickle asks for (posix|os|nt)\.system.*refused"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------- SVHN
def test_svhn_mat_nhwc_and_label_10_means_0(tmp_path, monkeypatch):
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.parent.mkdir()
    scipy.io.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})  # MATLAB: [H, W, C, N]
    patch_md5(monkeypatch, SVHN, **{"test_32x32.mat": path.read_bytes()})

    got = load_dataset("svhn", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, [0, 1, 9, 0])
    assert got.images.flags["C_CONTIGUOUS"] and got.labels.dtype == np.int64


# --------------------------------------------------------------------------- npz
@pytest.mark.parametrize("shape", [(3, 6, 5), (3, 6, 5, 1), (3, 6, 5, 3)])
def test_npz_any_name_nhw_and_nhwc(tmp_path, shape):
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.array([2, 0, 1], dtype=np.int32)
    np.savez(tmp_path / "toy_val.npz", x=x, y=y)
    got = load_dataset("toy", "val", data_dir=tmp_path)
    np.testing.assert_array_equal(got.images, x.reshape(3, 6, 5, -1))
    np.testing.assert_array_equal(got.labels, y)
    assert got.labels.dtype == np.int64 and got.shape == (6, 5, shape[3] if len(shape) == 4 else 1)


def test_npz_subset_name_is_used_and_flagged(tmp_path, caplog):
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10_train_first4000.npz", x=x, y=np.arange(4), index=np.arange(4))
    with caplog.at_level(logging.WARNING, logger="vaeood.data"):
        got = load_dataset("cifar10", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(got.images, x)
    assert "first4000" in got.source and "subset" in got.source
    assert any("subset" in r.getMessage() for r in caplog.records)


def test_resolution_order_exact_npz_then_official_then_subset(tmp_path, monkeypatch):
    images, labels = grey(2)
    files = write_idx_split(tmp_path, "test", images, labels)
    patch_md5(monkeypatch, FashionMNIST, **files)
    np.savez(tmp_path / "fashion_mnist_test_small.npz", x=images[:1], y=labels[:1])
    assert len(load_dataset("fashion_mnist", "test", data_dir=tmp_path)) == 2  # official beats subset
    np.savez(tmp_path / "fashion_mnist_test.npz", x=images[:, :3, :3], y=labels)
    assert load_dataset("fashion_mnist", "test", data_dir=tmp_path).shape == (3, 3, 1)  # exact npz first


@pytest.mark.parametrize("arrays, pattern", [
    ({"images": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, int)}, r"missing array 'x'"),
    ({"x": np.zeros((2, 4, 4), np.float32), "y": np.zeros(2, int)},
     r"field 'x' has dtype float32, but images must be uint8 with values 0-255"),
    ({"x": np.zeros((2, 4, 4, 2), np.uint8), "y": np.zeros(2, int)}, r"field 'x' has shape \(2, 4, 4, 2\)"),
    ({"x": np.zeros((2, 4), np.uint8), "y": np.zeros(2, int)}, r"field 'x' has shape \(2, 4\)"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)},
     r"field 'x' holds 2 images but field 'y' holds 3 labels"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, float)}, r"field 'y' has dtype float64"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([1, None])}, r"field 'y' holds Python objects"),
])
def test_npz_errors_name_file_and_field(tmp_path, arrays, pattern):
    np.savez(tmp_path / "toy_train.npz", **arrays)
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset("toy", "train", data_dir=tmp_path)
    assert "toy_train.npz" in str(err.value)


def test_corrupt_npz_names_file(tmp_path):
    (tmp_path / "toy_train.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="toy_train.npz: not a readable .npz file"):
        load_dataset("toy", "train", data_dir=tmp_path)


# --------------------------------------------------------------------------- not found / sample
def test_missing_dataset_lists_every_place_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", "train", data_dir=tmp_path / "mine")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DataError)
    msg = str(err.value)
    for place in (tmp_path / "mine", tmp_path / "mine" / "fashion_mnist",
                  tmp_path / "home" / ".cache" / "vaeood", tmp_path / "sys-fmnist"):
        assert f"{place}  [" in msg
    assert "$VAEOOD_DATA: not set" in msg
    assert "--download" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "fashion_mnist_train.npz" in msg and "allow_sample=True" in msg


def test_unknown_name_suggests_the_close_one(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="did you mean 'fashion_mnist'"):
        load_dataset("fahsion_mnist", "train", data_dir=tmp_path)


def test_name_must_not_be_a_path(tmp_path, monkeypatch):
    # a name with a '/' is a folder of images (vaeood.data.folder_dataset), never an npz file
    # looked up outside the data dir: ../x_train.npz beside it is not read
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "x_train.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, np.int64))
    monkeypatch.chdir(tmp_path / "d")
    with pytest.raises(DataError, match="../x: no such folder"):
        load_dataset("../x", "train", data_dir=tmp_path / "d")
    with pytest.raises(DataError, match="name='x y' must be a plain word"):
        load_dataset("x y", "train", data_dir=tmp_path)


@pytest.mark.parametrize("name, split, n", [("fashion_mnist", "train", 3000), ("fashion_mnist", "test", 1000),
                                            ("mnist", "train", 1000), ("mnist", "test", 1000)])
def test_allow_sample_falls_back_to_bundled_sample(tmp_path, caplog, name, split, n):
    with caplog.at_level(logging.WARNING, logger="vaeood.data"):
        got = load_dataset(name, split, data_dir=tmp_path, allow_sample=True)
    assert got.is_sample and got.images.shape == (n, 28, 28, 1) and got.images.dtype == np.uint8
    assert got.source.startswith("bundled sample: random") and "licence" in got.source
    np.testing.assert_array_equal(np.bincount(got.labels), np.full(10, n // 10))  # stratified
    assert any("bundled sample" in r.getMessage() for r in caplog.records)


def test_allow_sample_without_a_sample_still_raises(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="'cifar10' split 'test' not found"):
        load_dataset("cifar10", "test", data_dir=tmp_path, allow_sample=True)


def test_bundled_sample_is_small():
    folder = Path(__import__("vaeood.data", fromlist=["x"]).__file__).parent / "sample"
    assert sum(p.stat().st_size for p in folder.glob("*.npz")) <= 3_000_000


def test_imageset_rejects_bad_arrays():
    with pytest.raises(DataError, match="field 'images' must have shape"):
        ImageSet("toy", "train", np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), "test")
    with pytest.raises(DataError, match="field 'labels' must be an int64"):
        ImageSet("toy", "train", np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int32), "test")


# --------------------------------------------------------------------------- download
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def dead_url() -> str:
    """A URL on a local port nobody listens on: connection refused, instantly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_tries_mirrors_in_order_and_verifies(tmp_path, monkeypatch, http_root):
    served, url = http_root
    images, labels = grey(3)
    files = write_idx_split(served, "test", images, labels)
    patch_md5(monkeypatch, FashionMNIST, **files)
    monkeypatch.setattr(FashionMNIST, "mirrors", (dead_url(), url))

    got = load_dataset("fashion_mnist", "test", data_dir=tmp_path / "dl", download=True)
    np.testing.assert_array_equal(got.images[..., 0], images)
    assert sorted(p.name for p in (tmp_path / "dl" / "fashion_mnist").iterdir()) == sorted(files)
    # Next time it is found on disk without downloading.
    monkeypatch.setattr(FashionMNIST, "mirrors", (dead_url(),))
    assert len(load_dataset("fashion_mnist", "test", data_dir=tmp_path / "dl")) == 3


def test_download_with_wrong_md5_leaves_no_file(tmp_path, monkeypatch, http_root):
    served, url = http_root
    files = write_idx_split(served, "test", *grey(2))
    patch_md5(monkeypatch, MNIST, **files)
    monkeypatch.setitem(MNIST.md5, "t10k-images-idx3-ubyte.gz", "0" * 32)
    monkeypatch.setattr(MNIST, "mirrors", (url,))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz.*MD5 .*expected 0{32}") as err:
        load_dataset("mnist", "test", data_dir=tmp_path / "dl", download=True)
    assert not isinstance(err.value, DatasetNotFoundError)
    assert list((tmp_path / "dl" / "mnist").iterdir()) == []  # no bad file, no .part file


def test_download_without_network_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setattr(SVHN, "mirrors", (dead_url(),))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("svhn", "train", data_dir=tmp_path / "dl", download=True)
    msg = str(err.value)
    assert "could not download train_32x32.mat" in msg and "no internet access" in msg
    assert str(tmp_path / "dl" / "svhn" / "train_32x32.mat") in msg
    assert not (tmp_path / "dl" / "svhn" / "train_32x32.mat").exists()


def test_download_failure_can_fall_back_to_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", (dead_url(),))
    got = load_dataset("mnist", "test", data_dir=tmp_path, download=True, allow_sample=True)
    assert got.is_sample


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA, reason="set VAEOOD_DATA (e.g. to ../shared/data) to test on real data")
def test_real_data_via_env(monkeypatch):
    """Reads the real Fashion-MNIST test split from $VAEOOD_DATA (10,000 images)."""
    monkeypatch.setenv("VAEOOD_DATA", REAL_DATA)
    got = load_dataset("fashion_mnist", "test")
    assert got.images.shape == (10000, 28, 28, 1) and got.images.dtype == np.uint8
    assert got.labels.dtype == np.int64 and not got.is_sample


def test_tinyimagenet_loads_from_its_npz_like_any_npz_dataset(tmp_path):
    """``tinyimagenet`` has no official files here (not in DATASETS): ``tinyimagenet_test.npz``
    (32×32 RGB, labels all −1, as ../shared/data has it) loads by the npz route, and a
    missing file says which file to write."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "tinyimagenet_test.npz", x=x, y=np.full(6, -1, dtype=np.int64))
    got = load_dataset("tinyimagenet", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(got.images, x)
    assert got.labels.tolist() == [-1] * 6 and got.source == "tinyimagenet_test.npz" and not got.is_sample
    with pytest.raises(DatasetNotFoundError, match="tinyimagenet_train.npz"):
        load_dataset("tinyimagenet", "train", data_dir=tmp_path)


@pytest.mark.skipif(not REAL_DATA or not os.path.exists(os.path.join(REAL_DATA or ".", "tinyimagenet_test.npz")),
                    reason="set VAEOOD_DATA (e.g. to ../shared/data, which has tinyimagenet_test.npz)")
def test_real_tinyimagenet_via_env(monkeypatch):
    """Reads the real Tiny ImageNet (resize) test set from $VAEOOD_DATA (10,000 images, ~1 s)."""
    monkeypatch.setenv("VAEOOD_DATA", REAL_DATA)
    got = load_dataset("tinyimagenet", "test")
    assert got.images.shape == (10000, 32, 32, 3) and got.images.dtype == np.uint8 and not got.is_sample


def test_registry_lists_official_datasets():
    assert list(DATASETS) == ["cifar10", "fashion_mnist", "mnist", "svhn"]


def test_a_file_rewritten_between_two_loads_is_read_again_and_no_caller_changes_another_s_images(tmp_path):
    """load_dataset keeps a file's arrays while it is unchanged and gives every caller a
    read-only view of them: a rewritten file (even with the same size) must give the new
    images and digest, and no caller can change what the next load returns."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "toy_test.npz", x=first, y=np.zeros(5, dtype=np.int64))
    a = load_dataset("toy", "test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="read-only"):
        a.images[:] = 0
    a.labels[:] = 7  # the labels are the caller's own copy
    b = load_dataset("toy", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(b.images[..., 0], first)
    assert (b.labels == 0).all()
    # the views keep a fresh read's strides (grey: a 0-stride channel axis), which decide the
    # memory format of torch's convolutions and so the bits a model trains to
    from vaeood.data.npz import read_image_arrays

    assert a.images.strides == b.images.strides == read_image_arrays(tmp_path / "toy_test.npz", "x")[0].strides
    second = 255 - first  # same shapes, so the same file size
    os.replace(_write(tmp_path / "new.npz", second), tmp_path / "toy_test.npz")
    c = load_dataset("toy", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(c.images[..., 0], second)
    assert c.files != b.files and c.files[0][1] == hashlib.sha256((tmp_path / "toy_test.npz").read_bytes()).hexdigest()


def _write(path: Path, images: np.ndarray) -> Path:
    np.savez(path, x=images, y=np.zeros(len(images), dtype=np.int64))
    return path
