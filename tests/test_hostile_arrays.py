"""Arrays and models given to the Python API in a shape they do not have: refused by name,
with the fix, never read in another layout nor failing inside torch (issue 34's hostile run:
a channels-first N×1×28×28 array scored as N×H×W×C flipped an AUROC from 0.994 to 0.002)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tinydata import blobs, strokes
from vaeood import VAEAdapter, evaluate_model
from vaeood.features.core import ShapeMismatchError, features_of


class LinearVAE(nn.Module):
    """A dense VAE on 1×28×28 images: a matrix product that any other size would break."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(784, 4), nn.Linear(2, 784)

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).view(-1, 1, 28, 28)


def bernoulli(params, x):
    return (x * params.log() + (1 - x) * (1 - params).log()).flatten(1).sum(-1)


def adapter(log_prob=bernoulli) -> VAEAdapter:
    vae = LinearVAE()
    return VAEAdapter(vae.encode, vae.decode, log_prob, (1, 28, 28), modules={"vae": vae})


def test_a_channels_first_array_is_refused_not_read_as_channels_last():
    model = adapter()
    nchw = blobs(8, 1)[:, None]  # N×1×28×28, as torch users hold images
    with pytest.raises(ShapeMismatchError, match=r"shape \(8, 1, 28, 28\).*C×H×W = 28×1×28.*model takes 1×28×28.*"
                                                 r"channels-first.*images.transpose\(0, 2, 3, 1\)"):
        evaluate_model(model, nchw, {"strokes": strokes(8, 2)[:, None]})
    # the same images in the documented layouts score the same
    nhwc = features_of(model, nchw.transpose(0, 2, 3, 1), "log_px")["log_px_nats"]
    tensor = features_of(model, torch.from_numpy(nchw), "log_px")["log_px_nats"]
    np.testing.assert_array_equal(nhwc, tensor)


def test_a_channels_last_tensor_no_images_and_images_of_another_size_are_refused_naming_the_shapes():
    model = adapter()
    with pytest.raises(ShapeMismatchError, match=r"C×H×W = 28×28×1.*model takes 1×28×28.*channels-last.*"
                                                 r"permute\(0, 3, 1, 2\)"):
        features_of(model, torch.from_numpy(blobs(4, 1)[..., None]), "log_px")
    with pytest.raises(ShapeMismatchError, match=r"C×H×W = 1×32×32, but the model takes 1×28×28.*conform_images"):
        evaluate_model(model, blobs(4, 1, size=32), {"strokes": strokes(4, 2, size=32)})
    with pytest.raises(ValueError, match=r"images holds no images \(shape \(0, 28, 28, 1\)\); give at least one"):
        evaluate_model(model, np.zeros((0, 28, 28, 1), np.uint8), {})
    # a feature of the image alone (no model) takes images of any size
    assert features_of(model, blobs(3, 1, size=32), "compressed")["png_bits"].shape == (3,)


@pytest.mark.parametrize("reduce", [lambda t: t.sum(), lambda t: t.sum().reshape(1)], ids=["scalar", "per-batch"])
def test_a_log_prob_that_sums_over_the_batch_is_refused_naming_the_shape_and_the_fix(reduce):
    model = adapter(lambda params, x: reduce(bernoulli(params, x)))
    with pytest.raises(ValueError, match=r"log_prob returned shape \[1?\] for 4 images.*expected \[N\] = \[4\].*"
                                         r"sum over the pixel axes only"):
        features_of(model, blobs(4, 1), "log_px")


def test_an_array_is_stored_in_the_order_of_its_images_hashes_whatever_order_it_came_in():
    """A class-sorted array would otherwise train on its first classes and calibrate on its last."""
    import hashlib

    from vaeood.image_arrays import hash_order

    images = np.concatenate([blobs(6, 0, size=16, channels=3), strokes(6, 1, size=16, channels=3)])
    images[3] = images[9]  # two equal images keep their given order
    order = hash_order(images)
    digests = [hashlib.sha256(im.tobytes()).hexdigest() for im in images[order]]
    assert digests == sorted(digests) and sorted(order) == list(range(12))
    assert list(order).index(3) < list(order).index(9)
    shuffled = np.random.default_rng(0).permutation(12)
    assert np.array_equal(images[shuffled][hash_order(images[shuffled])], images[order])  # the same stored array
    assert hash_order(images[:0]).shape == (0,)
