"""Compositing: the change carried onto the input's own pixels, at its own size."""

import numpy as np
import pytest
from PIL import Image

from model.composite import MAX_OUTPUT_SIDE, cap_size, composite, grid_to_native, native_to_grid
from model.preprocess import to_model_input


@pytest.mark.parametrize("shape", [(128, 128), (256, 256), (200, 150), (150, 260), (96, 96)])
def test_outside_the_region_the_input_is_kept_bit_for_bit(shape):
    rng = np.random.default_rng(0)
    grey = rng.random(shape, dtype=np.float32)
    delta = rng.normal(0, 0.2, (128, 128)).astype(np.float32)
    weight = np.zeros((128, 128), np.float32)
    weight[40:70, 30:60] = 1.0
    result, region = composite(grey, delta, weight)
    assert result.shape == grey.shape and region.shape == grey.shape and result.dtype == np.float32
    assert np.array_equal(result[~region], grey[~region])
    assert region.any() and not region.all()
    assert not np.array_equal(result[region], grey[region])
    assert 0.0 <= result.min() and result.max() <= 1.0


def test_zero_weight_returns_the_input_unchanged():
    grey = np.random.default_rng(1).random((300, 200), dtype=np.float32)
    result, region = composite(grey, np.ones((128, 128), np.float32), np.zeros((128, 128), np.float32))
    assert not region.any() and np.array_equal(result, grey)


def test_a_user_limit_is_never_crossed():
    grey = np.full((256, 256), 0.5, np.float32)
    weight = np.ones((128, 128), np.float32)
    limit = np.zeros((256, 256), bool)
    limit[10:20, 30:40] = True
    result, region = composite(grey, np.full((128, 128), 0.1, np.float32), weight, limit)
    assert np.array_equal(region, limit)
    assert np.allclose(result[limit], 0.6) and np.array_equal(result[~limit], grey[~limit])


@pytest.mark.parametrize("shape", [(128, 128), (200, 150), (150, 260)])
def test_grid_to_native_inverts_the_model_inputs_geometry(shape):
    """A smooth image through `to_model_input` and back lands where it came from."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    grey = (0.5 + 0.4 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.float32)
    grid = ((to_model_input(grey, 128)[0, 0] + 1) / 2).numpy()
    back = grid_to_native(grid, shape)
    assert back.shape == shape
    # the pad (median border) is cut off; bicubic down and up blurs a little
    assert np.abs(back - grey).mean() < 0.02


def test_native_to_grid_places_a_mask_where_the_model_sees_it():
    mask = np.zeros((100, 200), np.float32)
    mask[:, :100] = 1.0  # the left half of a wide image
    grid = native_to_grid(mask, 128)
    assert grid.shape == (128, 128)
    # padded to 200x200: rows 50..150 of 200 hold the image, i.e. grid rows 32..96
    assert grid[:30].max() == 0 and grid[100:].max() == 0
    assert grid[40:90, :60].min() > 0.99 and grid[40:90, 70:].max() == 0


def test_cap_size_reduces_only_very_large_inputs():
    small = np.zeros((MAX_OUTPUT_SIDE, 100), np.float32)
    assert cap_size(small) is small
    notes: list[str] = []
    big = np.asarray(Image.new("F", (100, MAX_OUTPUT_SIDE + 904)), np.float32)
    capped = cap_size(big, notes)
    assert max(capped.shape) == MAX_OUTPUT_SIDE and notes and "reduced" in notes[0]


def test_the_result_is_clipped_to_the_unit_range():
    """The pipeline hands the change in [0, 1] units; a change past white or black is clipped."""
    grey = np.full((128, 128), 0.95, np.float32)
    up, _ = composite(grey, np.full((128, 128), 0.5, np.float32), np.ones((128, 128), np.float32))
    down, _ = composite(grey, np.full((128, 128), -2.0, np.float32), np.ones((128, 128), np.float32))
    assert up.max() == 1.0 and up.min() == 1.0 and down.max() == 0.0
