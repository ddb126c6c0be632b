"""LAPA image preprocessing, the augmentation and its deterministic inference crop."""

from __future__ import annotations

import numpy as np
import pytest

from latent_pretraining.vqgan.images import (
    augment,
    center_crop,
    crop_side,
    eval_mode,
    lapa_resize,
    preprocess,
    resize_linear,
    to_model_range,
)


def test_resize_uses_half_pixel_bilinear_sampling():
    src = np.array([[0, 100]], np.uint8)[..., None].repeat(3, axis=-1)  # one row, two pixels
    out = resize_linear(src, 1, 4)[0, :, 0]
    # OpenCV INTER_LINEAR: x_src = (x + 0.5) / 2 - 0.5 -> -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_array_equal(out, [0, 25, 75, 100])


def test_lapa_resize_longest_side_then_square():
    tall = np.zeros((300, 150, 3), np.uint8)
    tall[:, :75] = 255  # left half white
    out = lapa_resize(tall, 256)
    assert out.shape == (256, 256, 3)
    assert out[:, :120].min() == 255 and out[:, 136:].max() == 0  # squashed, not padded or cropped


def test_model_range():
    np.testing.assert_allclose(to_model_range(np.array([0, 255], np.uint8)), [-1.0, 1.0])
    x = preprocess(np.full((40, 60, 3), 128, np.uint8), size=32)
    assert (
        x.shape == (32, 32, 3) and x.dtype == np.float32 and abs(float(x.mean()) - (128 / 127.5 - 1)) < 1e-6
    )


def _square_width(image: np.ndarray) -> int:
    dark = image[..., 0] < 80  # square: 0 -> at most ~60 after colour jitter; table: 200 -> at least ~110
    return int(dark.sum(axis=1).max())


def test_inference_crop_zooms_like_the_training_crop():
    size = 64
    image = np.full((size, size, 3), 200, np.uint8)
    image[24:40, 24:40] = 0  # a 16-pixel dark square in the middle
    assert crop_side(size) == 61  # sqrt(0.9) of the side
    expected = _square_width(center_crop(image))
    assert expected == 17  # 16 * 64 / 61, magnified like the training crop
    rng = np.random.default_rng(0)
    widths = {_square_width(augment(image, rng)) for _ in range(20)}
    assert widths <= {expected - 1, expected, expected + 1}
    assert _square_width(lapa_resize(image, size)) == 16  # LAPA's deploy path: no crop, a different zoom


def test_augmentation_is_random_but_seeded():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = augment(image, np.random.default_rng(5))
    b = augment(image, np.random.default_rng(5))
    c = augment(image, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="needs an rng"):
        preprocess(image, 32, "augment")


def test_named_modes_and_the_eval_counterpart_of_training():
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    plain = preprocess(image, 32)
    np.testing.assert_array_equal(preprocess(image, 32, "resize"), plain)
    np.testing.assert_array_equal(
        preprocess(image, 32, "center_crop"), to_model_range(center_crop(lapa_resize(image, 32)))
    )
    assert eval_mode("augment") == "center_crop" and eval_mode("resize") == "resize"
    with pytest.raises(ValueError, match="'crop' is not one of resize, augment, center_crop"):
        preprocess(image, 32, "crop")
