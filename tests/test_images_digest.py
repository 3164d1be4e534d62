"""images_digest: the one digest of a slice of images, as calibration files record it
(``calibration_images_sha256``) and as feature caches key their data (``data_sha256``)."""

import hashlib

import numpy as np

from vaeood.features import images_digest


def test_the_digest_is_the_one_calibration_files_hold():
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    by_hand = hashlib.sha256(repr(((2, 3, 4, 1), "uint8")).encode() + bytes(range(24))).hexdigest()
    # the value a calibration file made before this digest had one implementation records
    assert images_digest(images) == by_hand == "a4726e08e4201188069d731f66fa80095ace330c18b32eb7914a69d25c5e6f86"


def test_the_digest_sees_bytes_order_shape_and_dtype():
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    flipped = images[:, ::-1]  # a view in another order: its bytes in C order differ
    assert images_digest(flipped) == images_digest(np.ascontiguousarray(flipped)) != images_digest(images)
    assert images_digest(images.reshape(2, 4, 3, 1)) != images_digest(images)
    assert images_digest(images.astype(np.int8)) != images_digest(images)
