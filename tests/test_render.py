"""Display normalisation (method.md section 6) against hand-computed values, colormaps, overlays."""

import numpy as np
import pytest
import torch

from vitflow.render import MODES, apply_colormap, colormap_lut, overlay, to_uint8
from vitflow.render.colormap import _builtin_jet

# Two accumulated maps of one image on a 1x3 grid.
FLOW = np.array([[[0.0, 1.0, 2.0]], [[0.0, 2.0, 4.0]]])


def test_sigmoid_mode_matches_hand_computation():
    # g = 4; X1 = [0, .25, .5], X2 = [0, .5, 1]; Z = sigmoid(5X) - .5:
    # Z1 = [0, .2772999, .4241418], Z2 = [0, .4241418, .4933071]
    # block 1: 255 * [0, .2773/.42414, 1] = [0, 166.72, 255]
    # block 2: 255 * [0, .42414/.49331, 1] = [0, 219.25, 255]
    out = to_uint8(FLOW, mode="sigmoid")
    assert out.dtype == np.uint8 and out.shape == (2, 1, 3)
    assert out.tolist() == [[[0, 166, 255]], [[0, 219, 255]]]


def test_global_mode_matches_hand_computation():
    # g_max = 4, g_min = 0. block 1: I = [0, .5, 1], factor (2-0)/(4-0) = .5 -> [0, 63.75, 127.5]
    # block 2: I = [0, .5, 4 / (4 + 1e-10)], factor 1 -> [0, 127.5, 254.99999...]: the published
    # epsilon keeps the brightest pixel just under 255, and uint8 truncates
    assert to_uint8(FLOW, mode="global").tolist() == [[[0, 63, 127]], [[0, 127, 254]]]
    # with g_min = 2: block 1 = [1, 2, 3]: I = relu(([1,2,3] - 2) / (3 - 2)) = [0, 0, 1], factor (3-1)/(6-2)
    shifted = np.array([[[1.0, 2.0, 3.0]], [[2.0, 4.0, 6.0]]])
    assert to_uint8(shifted, mode="global").tolist() == [[[0, 0, 127]], [[0, 127, 254]]]


def test_minmax_mode_normalises_each_map_alone():
    shifted = np.array([[[1.0, 2.0, 3.0]], [[2.0, 4.0, 6.0]]])
    assert to_uint8(shifted, mode="minmax").tolist() == [[[0, 127, 255]], [[0, 127, 255]]]


@pytest.mark.parametrize("mode", ["sigmoid", "global", "minmax"])
def test_all_zero_maps_render_black_without_nans(mode):
    assert to_uint8(torch.zeros(3, 2, 2), mode=mode).tolist() == np.zeros((3, 2, 2), np.uint8).tolist()


def test_resize_after_conversion_and_tensor_input():
    small = to_uint8(torch.tensor(FLOW), mode="minmax")
    big = to_uint8(torch.tensor(FLOW), size=(2, 6), mode="minmax")
    assert big.shape == (2, 2, 6)
    # half-pixel bilinear upsampling by 2: edge pixels keep the end values, inner ones interpolate
    assert big[0, 0].tolist() == [0, 32, 95, 159, 223, 255]
    assert (big[:, 0] == big[:, 1]).all() and small[0, 0, 1] == 127


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="mode must be one of"):
        to_uint8(FLOW, mode="softmax")
    with pytest.raises(ValueError, match=r"index the batch first"):
        to_uint8(np.zeros((2, 3, 4, 4)))


def test_builtin_jet_equals_matplotlib_jet():
    np.testing.assert_allclose(_builtin_jet(), colormap_lut("jet"), atol=1e-12)
    assert apply_colormap(np.array([[0, 255]], np.uint8)).tolist() == [[[0, 0, 128], [128, 0, 0]]]


def test_overlay_blends_published_weights():
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.full((2, 2), 255, np.uint8)  # resized to the image; jet(1) = (0.5, 0, 0)
    out = overlay(image, heat)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [131, 80, 80]  # 0.4*128 + 0.8*100, 0.8*100, 0.8*100
    float_image = np.full((4, 4, 3), 100 / 255)
    assert np.array_equal(overlay(float_image, heat), out)
    assert overlay(image, heat, alpha=0.0, image_weight=1.0).tolist() == image.tolist()
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        overlay(np.full((4, 4, 3), -1.0), heat)


@pytest.mark.parametrize("mode", MODES)
def test_one_map_comes_back_as_one_heatmap(mode):
    """A single (h, w) map gives one (H, W) heatmap, equal to the L = 1 sequence's only frame, so it
    goes straight into overlay() (the README's Python example)."""
    one = torch.tensor(FLOW)[-1]
    for size in (None, (4, 6)):
        heat = to_uint8(one, size=size, mode=mode)
        assert heat.shape == (size or one.shape)
        assert (heat == to_uint8(one[None], size=size, mode=mode)[0]).all()
    assert overlay(np.zeros((4, 6, 3), np.uint8), to_uint8(one, size=(4, 6), mode=mode)).shape == (4, 6, 3)
