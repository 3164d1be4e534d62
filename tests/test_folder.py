"""Reading images to decide on: folders of PNG/JPEG files (bad files named, or skipped
and listed on request, never dropped silently), .npz files and dataset names."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from vaeood.data import DataError
from vaeood.data.conform import conform_images
from vaeood.data.decode import read_image
from vaeood.data.inputs import load_input, read_image_folder


def _png_bytes(arr, mode=None, **save):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _grey(seed, h=28, w=28):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Five 28×28 grey PNGs, names out of order on purpose."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in (3, 0, 4, 1, 2):
        (d / f"img{i}.png").write_bytes(_png_bytes(_grey(i)))
    return d


def test_reads_a_folder_exactly_in_name_order(folder):
    got = read_image_folder(folder, shape=(1, 28, 28))
    assert got.names == [f"img{i}.png" for i in range(5)]
    assert got.images.shape == (5, 28, 28, 1) and got.images.dtype == np.uint8
    for i in range(5):
        np.testing.assert_array_equal(got.images[i, ..., 0], _grey(i))  # PNG is lossless
    assert got.skipped == [] and got.fitted is None and got.kind == "folder"


def test_hidden_files_are_ignored_and_jpeg_is_read(folder):
    (folder / ".DS_Store").write_bytes(b"\0\0junk")
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(buf, format="JPEG", quality=95)
    (folder / "z.JPG").write_bytes(buf.getvalue())
    got = read_image_folder(folder)
    assert got.names[-1] == "z.JPG" and len(got) == 6
    assert got.left_out == [(".DS_Store", "hidden (a name starting with '.'): not read")]  # said, not silent
    assert abs(int(got.images[-1].mean()) - 128) <= 2


def test_pixel_formats(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    (tmp_path / "rgb.png").write_bytes(_png_bytes(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    # an opaque alpha channel is dropped; a transparent one is refused
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 255, np.uint8)], axis=-1)
    (tmp_path / "opaque.png").write_bytes(_png_bytes(rgba))
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png"), rgb)
    rgba[0, 0, 3] = 10
    (tmp_path / "clear.png").write_bytes(_png_bytes(rgba))
    with pytest.raises(DataError, match="transparency"):
        read_image(tmp_path / "clear.png")
    # a grey palette image gives one channel; 1-bit gives 0/255
    pal = Image.fromarray(_grey(1)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (28, 28, 1)
    Image.fromarray(_grey(1) > 127).save(tmp_path / "bits.png")
    assert set(np.unique(read_image(tmp_path / "bits.png"))) <= {0, 255}
    # another format under a .png name
    Image.fromarray(_grey(2)).save(tmp_path / "gif.png", format="GIF")
    with pytest.raises(DataError, match="GIF image, not PNG or JPEG"):
        read_image(tmp_path / "gif.png")


def test_bad_files_are_all_named_and_the_folder_refused(folder):
    good = _png_bytes(_grey(9))
    (folder / "cut.png").write_bytes(good[: len(good) // 2])          # truncated mid-data
    (folder / "cut_end.png").write_bytes(good[:-12])                  # lost its end chunk
    (folder / "text.png").write_text("not an image at all\n")         # a text file named .png
    (folder / "notes.txt").write_text("hello")                        # not an image name
    (folder / "big.png").write_bytes(_png_bytes(_grey(5, 32, 32)))    # another shape
    (folder / "gone.png").symlink_to(folder / "missing.png")           # broken link
    with pytest.raises(DataError) as err:
        read_image_folder(folder, shape=(1, 28, 28))
    msg = str(err.value)
    assert "6 of 11 files cannot be used" in msg
    assert "cut.png: truncated or corrupt" in msg
    assert "cut_end.png: truncated or corrupt" in msg
    assert "text.png: not an image file" in msg
    assert "notes.txt: not a PNG/JPEG file name" in msg
    assert "big.png: C×H×W = 1×32×32, not the model's C×H×W = 1×28×28; pass --pad or --resize" in msg
    assert "gone.png: cannot be read" in msg
    assert "--skip-bad" in msg
    for good_name in ("img0.png", "img4.png"):
        assert good_name not in msg


def test_skip_bad_returns_the_skip_list(folder):
    good = _png_bytes(_grey(9))
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "text.png").write_text("nope")
    got = read_image_folder(folder, shape=(1, 28, 28), skip_bad=True)
    assert got.names == [f"img{i}.png" for i in range(5)]
    assert [name for name, _ in got.skipped] == ["cut.png", "text.png"]
    assert "truncated" in got.skipped[0][1]


def test_mixed_sizes_without_a_model_shape_name_the_odd_ones(folder):
    (folder / "wide.png").write_bytes(_png_bytes(np.zeros((28, 30), np.uint8)))
    with pytest.raises(DataError,
                       match=r"wide.png: C×H×W = 1×28×30, not the folder's most common shape C×H×W = 1×28×28"):
        read_image_folder(folder)


def test_a_colour_image_among_grey_ones_takes_the_folders_mode_and_is_counted(folder):
    rgb = np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    (folder / "rgb.png").write_bytes(_png_bytes(rgb))
    got = read_image_folder(folder)
    assert got.images.shape == (6, 28, 28, 1) and got.converted == {"RGB → grey": 1}
    luma = np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114])), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got.images[got.names.index("rgb.png"), ..., 0], luma)
    model = read_image_folder(folder, shape=(3, 28, 28))  # the model's mode wins: grey → RGB by repetition
    assert model.converted == {"grey → RGB": 5}
    np.testing.assert_array_equal(model.images[0], np.repeat(_grey(0)[..., None], 3, axis=-1))


def test_fit_pads_and_resizes_as_scoring_does_and_is_recorded(folder):
    (folder / "wide.png").write_bytes(_png_bytes(_grey(7, 28, 40)))
    with pytest.raises(DataError, match="--pad or --resize"):
        read_image_folder(folder, shape=(3, 32, 32))
    got = read_image_folder(folder, shape=(3, 32, 32), conform="resize")
    assert got.images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(got.images[0], conform_images(_grey(0)[None, ..., None], (3, 32, 32), "resize")[0])
    assert got.names[-1] == "wide.png"
    assert got.fitted["method"] == "resize"
    assert got.fitted["from_shapes"] == {"1×28×28": 5, "1×28×40": 1}
    with pytest.raises(DataError, match="cannot shrink"):
        read_image_folder(folder, shape=(1, 32, 32), conform="pad")  # 28×40 cannot be padded to 32×32
    (folder / "wide.png").unlink()
    padded = read_image_folder(folder, shape=(1, 32, 32), conform="pad")
    np.testing.assert_array_equal(padded.images[2, 2:30, 2:30, 0], _grey(2))
    assert padded.images[:, :2].max() == 0


def test_empty_or_all_bad_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="holds no files"):
        read_image_folder(tmp_path)
    (tmp_path / "a.png").write_text("x")
    with pytest.raises(DataError, match="none of its 1 files is a usable image"):
        read_image_folder(tmp_path, skip_bad=True)
    with pytest.raises(DataError, match="not a folder"):
        read_image_folder(tmp_path / "nope")


def test_load_input_npz_dataset_and_folder(tmp_path, folder):
    x = np.stack([_grey(i) for i in range(4)])
    np.savez(tmp_path / "mine_test.npz", x=x, y=np.arange(4))
    got = load_input(tmp_path / "mine_test.npz", shape=(1, 28, 28))
    assert got.kind == "npz" and got.names[1] == "mine_test.npz[1]"
    np.testing.assert_array_equal(got.images[..., 0], x)
    np.testing.assert_array_equal(got.labels, np.arange(4))
    by_name = load_input("mine", shape=(1, 28, 28), data_dir=tmp_path, limit=3)
    assert by_name.kind == "dataset" and by_name.names == ["mine/test[0]", "mine/test[1]", "mine/test[2]"]
    with pytest.raises(DataError, match="pass --pad"):
        load_input(tmp_path / "mine_test.npz", shape=(3, 32, 32))
    padded = load_input(tmp_path / "mine_test.npz", shape=(3, 32, 32), conform="pad")
    assert padded.images.shape == (4, 32, 32, 3) and padded.fitted["description"] == "pad 1×28×28 → 3×32×32"
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=np.arange(4))
    with pytest.raises(DataError, match="dtype float32"):  # npz.py's validation
        load_input(tmp_path / "bad.npz")
    assert load_input(str(folder)).kind == "folder"
    with pytest.raises(DataError, match="no such folder or file"):
        load_input(os.path.join(str(tmp_path), "nowhere"))
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(DataError, match="neither a folder"):
        load_input(tmp_path / "plain.txt")


def test_only_regular_files_are_opened_and_links_are_read_as_their_target(folder, tmp_path):
    """A FIFO, a socket, a link to a FIFO and a broken link are named without being opened;
    a link to a regular PNG is read under the link's name; a FIFO .npz is refused."""
    import socket
    import threading

    os.mkfifo(folder / "pipe.png")
    os.mkfifo(tmp_path / "elsewhere")
    (folder / "to_pipe.png").symlink_to(tmp_path / "elsewhere")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "alias.png").symlink_to(folder / "img0.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.png"))
    try:
        got = []
        worker = threading.Thread(target=lambda: got.append(read_image_folder(folder, skip_bad=True)), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "a special file was opened"
    finally:
        sock.close()
    reasons = dict(got[0].skipped)
    assert reasons["pipe.png"].startswith("a FIFO (named pipe), not a regular file")
    assert reasons["to_pipe.png"].startswith("a FIFO (named pipe)")
    assert reasons["sock.png"].startswith("a socket") and "broken symbolic link" in reasons["gone.png"]
    assert got[0].names == ["alias.png", *[f"img{i}.png" for i in range(5)]]
    np.testing.assert_array_equal(got[0].images[0], got[0].images[1])
    os.mkfifo(tmp_path / "x.npz")
    with pytest.raises(DataError, match="a FIFO .named pipe., not a regular .npz file"):
        load_input(tmp_path / "x.npz")


def test_no_reader_of_a_named_file_waits_on_a_fifo(tmp_path):
    """A dataset .npz, a file to hash and a checkpoint that are FIFOs are refused by kind,
    at once (each reader would have blocked for ever waiting for a writer)."""
    import threading

    from vaeood.training.checkpoint import CheckpointError, load_checkpoint
    from vaeood.data import load_dataset
    from vaeood.data.checksums import file_hexdigest

    os.mkfifo(tmp_path / "mnist_test.npz")
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "checkpoint.pt")
    calls = {"dataset": (lambda: load_dataset("mnist", "test", data_dir=str(tmp_path)), DataError),
             "digest": (lambda: file_hexdigest(tmp_path / "mnist_test.npz", "sha256"), DataError),
             "checkpoint": (lambda: load_checkpoint(run), CheckpointError)}
    for what, (call, error) in calls.items():
        got = []

        def attempt(call=call, error=error, got=got):
            try:
                call()
            except error as err:
                got.append(str(err))

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), f"{what}: blocked on a FIFO"
        assert got and "a FIFO (named pipe), not a regular file" in got[0], (what, got)


def test_class_subfolders_are_read_as_training_reads_them(folder):
    for cls in ("a", "b"):
        (folder / cls).mkdir()
        (folder / cls / "x.png").write_bytes(_png_bytes(_grey(7)))
    (folder / "a" / "deeper").mkdir()
    with pytest.raises(DataError) as err:
        read_image_folder(folder)
    assert "img0.png: a file beside the class folders" in str(err.value)
    assert "a/deeper: a subfolder (folders are not read recursively)" in str(err.value)
    got = read_image_folder(folder, skip_bad=True)
    assert got.names == ["a/x.png", "b/x.png"] and got.classes == ["a", "b"]
