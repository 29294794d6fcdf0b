import time

import numpy as np
import pytest

from dissect.segmenters.color import COLOR_NAMES, name_colors

PROTOTYPES = [
    ((255, 0, 0), "red"),
    ((0, 0, 255), "blue"),
    ((250, 250, 250), "white"),
    ((10, 10, 10), "black"),
    ((128, 128, 128), "grey"),
    ((0, 200, 0), "green"),
    ((255, 255, 0), "yellow"),
    ((255, 165, 0), "orange"),
    ((139, 69, 19), "brown"),
    ((255, 192, 203), "pink"),
    ((128, 0, 128), "purple"),
    ((160, 32, 240), "purple"),
    ((0, 255, 255), "blue"),
    ((60, 120, 215), "blue"),
]


def test_broden_names():
    assert COLOR_NAMES == ["black", "blue", "brown", "green", "grey", "orange", "pink",
                           "purple", "red", "white", "yellow"]


@pytest.mark.parametrize("rgb,name", PROTOTYPES)
def test_prototypes(rgb, name):
    img = np.array([[rgb]], np.uint8)
    assert COLOR_NAMES[int(name_colors(img)[0, 0])] == name


def test_shape_dtype_and_determinism():
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    a = name_colors(img)
    assert a.shape == (17, 23)
    assert np.issubdtype(a.dtype, np.integer)
    assert a.min() >= 0 and a.max() < len(COLOR_NAMES)
    np.testing.assert_array_equal(a, name_colors(img.copy()))


def test_every_name_reachable():
    # all 2^24 colors subsampled on a 4-level grid step
    v = np.arange(0, 256, 4, dtype=np.uint8)
    grid = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(64, -1, 3)
    assert set(np.unique(name_colors(grid))) == set(range(len(COLOR_NAMES)))


def test_rejects_bad_shape():
    with pytest.raises(ValueError):
        name_colors(np.zeros((4, 4), np.uint8))


def test_fast_enough():
    img = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    name_colors(img)
    t = time.perf_counter()
    for _ in range(5):
        name_colors(img)
    # generous bound for slow CI machines; ~3 ms on a laptop core
    assert (time.perf_counter() - t) / 5 < 0.05
