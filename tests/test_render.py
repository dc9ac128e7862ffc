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


def test_fade_shows_the_photo_where_the_map_is_low_and_the_published_overlay_at_its_peak():
    """blend="fade": t * (published overlay) + (1 - t) * photo, t = heat / 255, clipped, checked
    against float64 by hand; zero heat leaves the photo untinted (jet's dark blue no longer tints
    it), full heat is the published overlay; Display.overlay (float32, the pictures) and overlay()
    (float64) agree."""
    from vitflow.render.placement import Box, Display

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    heat = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    heat[0, :3], heat[1, :3] = 0, 255
    for cmap in ("jet", "gray"):
        paper = overlay(photo, heat, alpha=0.4, image_weight=0.8, cmap=cmap, blend="paper")
        colours = apply_colormap(heat, cmap).astype(np.float64)
        by_hand = 0.4 * colours + 0.8 * photo
        assert (paper == np.clip(np.round(by_hand), 0, 255)).all()
        t = heat.astype(np.float64)[..., None] / 255
        expected = np.clip(np.round(t * by_hand + (1 - t) * photo), 0, 255)
        faded = overlay(photo, heat, alpha=0.4, image_weight=0.8, cmap=cmap)
        assert np.abs(faded.astype(int) - expected).max() <= 1  # rounding only
        assert (faded[0, :3] == photo[0, :3]).all() and (faded[1, :3] == paper[1, :3]).all()
        shown = Display(photo, Box(0, 0, 6, 9)).overlay(heat, cmap=cmap)
        assert np.abs(shown.astype(int) - faded).max() <= 1
        assert (Display(photo, Box(0, 0, 6, 9)).overlay(heat, cmap=cmap, blend="paper") == paper).all()
    with pytest.raises(ValueError, match="blend must be one of fade, paper"):
        overlay(photo, heat, blend="screen")


def _gif_frames(data: bytes) -> list[np.ndarray]:
    import io

    from PIL import Image

    gif, frames = Image.open(io.BytesIO(data)), []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    return frames


def test_gif_gradients_do_not_band_and_still_parts_stay_still():
    """A smooth map over a smooth photo: without dithering the 256-colour palette turns the
    gradient into flat bands (large errors once fine detail is averaged away); error diffusion
    keeps the averaged picture close to the frames. Pixels that are the same in every frame (the
    photo where the map is zero, with the fade) are the same in every decoded frame: no shimmer."""
    from PIL import Image
    from scipy.ndimage import uniform_filter

    from vitflow.render import encode_gif
    from vitflow.render.placement import Box, Display

    yy, xx = np.mgrid[0:96, 0:160].astype(np.float64)
    photo = np.stack([60 + xx, 90 + 0.5 * yy, 120 + 0 * xx], -1).astype(np.uint8)  # a smooth photo
    display = Display(photo, Box(0, 0, 96, 160))
    heats = [np.clip(255 * np.exp(-(((xx - 40 - 20 * b) / 30) ** 2 + ((yy - 48) / 25) ** 2)) - 8, 0, 255)
             for b in range(4)]  # fmt: skip
    frames = [display.overlay(h.astype(np.uint8)) for h in heats]
    decoded = _gif_frames(encode_gif([Image.fromarray(f) for f in frames]))

    def banding(pictures):  # mean error of the 4 x 4 averaged picture
        def smooth(a):
            return uniform_filter(np.asarray(a, np.float64), (4, 4, 1))

        return np.mean([np.abs(smooth(d) - smooth(f)).mean() for d, f in zip(pictures, frames, strict=True)])

    sample = np.concatenate([f[::2, ::2] for f in frames])
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.FASTOCTREE)
    plain = [np.asarray(Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE).convert("RGB"),
                        np.float64) for f in frames]  # fmt: skip
    assert banding(decoded) < 0.5 * banding(plain), (banding(decoded), banding(plain))
    still = np.all([(f == frames[0]).all(-1) for f in frames], axis=0)
    assert still.mean() > 0.2  # the photo, untouched where every map is zero
    for d in decoded[1:]:
        assert (d[still] == decoded[0][still]).all()


def _label_drawn_in_place(frame: np.ndarray, text: str):
    """The label as it was drawn before it was cached: laid out and rendered on the frame itself."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, min(image.height, image.width) // 22))
    room = image.width - 8
    if draw.textlength(text, font=font) > room:
        while text and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text = text + "…"
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


@pytest.mark.parametrize("shape", [(512, 512), (683, 1024), (1024, 640), (40, 300), (24, 60), (12, 12)])
def test_a_pasted_label_equals_the_one_drawn_on_the_frame(shape):
    from vitflow.render import label_frame

    rng = np.random.default_rng(sum(shape))
    long = "block 12/12  " + "a very long class name " * 6
    texts = ["block 6/6  checkered arrow  (sigmoid)", long, "", "é ü …"]
    for text in texts:
        frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        kept = frame.copy()
        for _ in range(2):  # drawn, then from the cache
            labelled = np.asarray(label_frame(frame, text))
            np.testing.assert_array_equal(labelled, _label_drawn_in_place(frame, text))
        np.testing.assert_array_equal(frame, kept)  # the frame given is not drawn on
        assert (labelled[:2, :2] == 0).all()  # the box's corner
        if shape[0] >= 40:  # below the box, the frame as it was
            np.testing.assert_array_equal(labelled[-1], frame[-1])
