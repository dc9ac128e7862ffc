"""Pictures on the original image: where the model's crop lies in the photo (probed from each
family's own transform), and a map's peak on a known object landing on that object."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from vitflow.data.preprocess import Preprocessing
from vitflow.render.placement import DIM, Box, Display, crop_box, display_size

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pre(*steps, mean=MEAN, std=STD):
    return Preprocessing(T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)]), mean, std, {})


def _centre(size, scale, crop):
    """The analytic box of Resize(shorter side = scale) + CenterCrop(crop) on ``size``."""
    height, width = size
    side = crop * min(height, width) / scale
    return Box((height - side) / 2, (width - side) / 2, side, side)


@pytest.mark.parametrize("size", [(300, 420), (480, 200), (224, 224), (1200, 1600)])
@pytest.mark.parametrize("scale, crop", [(256, 224), (248, 224), (224, 224)])
def test_crop_box_of_resize_and_centre_crop(size, scale, crop):
    pre = _pre(T.Resize(scale), T.CenterCrop(crop))
    box = crop_box(pre, pre.mean, pre.std, size)
    expected = _centre(size, scale, crop)
    tolerance = max(1.0, 0.003 * max(size))  # the ramp has 256 levels: within 0.3% of the photo
    for field in ("top", "left", "height", "width"):
        assert getattr(box, field) == pytest.approx(getattr(expected, field), abs=tolerance), field


def test_crop_box_of_a_squashing_resize_and_of_a_timm_transform():
    squash = _pre(T.Resize((224, 224)))  # Hugging Face ViT processors, Chefer's protocol
    box = crop_box(squash, MEAN, STD, (300, 500))
    assert box.top == pytest.approx(0, abs=1) and box.left == pytest.approx(0, abs=1)
    assert box.height == pytest.approx(300, abs=1.5) and box.width == pytest.approx(500, abs=2)
    import timm

    pre = Preprocessing.for_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    assert pre.config["crop_pct"] == 0.9
    box = crop_box(pre, pre.mean, pre.std, (300, 400))
    expected = _centre((300, 400), int(224 / 0.9), 224)
    assert box.left == pytest.approx(expected.left, abs=1) and box.width == pytest.approx(
        expected.width, abs=1
    )


def test_a_transform_that_is_not_resize_and_crop_gives_no_box():
    rotate = _pre(T.Resize((224, 224)), T.RandomRotation((30, 30)))
    assert crop_box(rotate, MEAN, STD, (300, 400)) is None


def test_display_size_rules():
    assert display_size((32, 32)) == (224, 224)  # tiny images enlarged to stay readable
    assert display_size((224, 224)) == (224, 224)  # a ViT's input size: as it is (the viewer enlarges it)
    assert display_size((3000, 4000)) == (500, 667)  # large ones reduced by a whole factor (6)
    assert display_size((1067, 1600)) == (356, 534)  # by 3, rounded up as Pillow's reduce
    assert display_size((512, 769)) == (256, 385)  # just over 768: halved
    assert display_size((600, 768)) == (600, 768)  # in between: as they are
    assert display_size((3000, 4000), 400) == (300, 400)  # a size asked for: exactly that


@pytest.mark.parametrize(("height", "width", "factor"), [(1067, 1600, 3), (700, 1537, 3), (800, 900, 2)])
def test_a_large_photo_is_shown_as_means_of_whole_blocks_and_its_box_scaled_exactly(height, width, factor):
    """Each picture pixel is the mean of its n x n block of the photo (the last row and column:
    of what is left), within the 1 grey level of Pillow's fixed-point rounding; the crop's box
    lands where the same photo pixels are."""
    from vitflow.render.placement import Shown, reduction

    rng = np.random.default_rng(height)
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert reduction((height, width)) == factor
    shown = Shown.of(Image.fromarray(photo))
    rows, cols = -(-height // factor), -(-width // factor)
    assert shown.image.shape == (rows, cols, 3) and shown.original_size == (height, width)
    padded = np.full((rows * factor, cols * factor, 3), np.nan)
    padded[:height, :width] = photo
    means = np.nanmean(padded.reshape(rows, factor, cols, factor, 3), axis=(1, 3))  # float64
    assert np.abs(shown.image - means).max() <= 1.0
    assert np.array_equal(Shown.of(photo).image, shown.image)  # an array gives the same picture
    box = Box(top=30.0, left=45.0, height=600.0, width=660.0)
    placed = Display.of_original(shown, box).box
    expected = (30.0 / factor, 45.0 / factor, 600.0 / factor, 660.0 / factor)
    assert (placed.top, placed.left, placed.height, placed.width) == pytest.approx(expected, rel=1e-12)


def test_a_peak_on_a_known_object_lands_on_it_in_the_original():
    """A red square at a known place in a 300 x 420 photo; the model sees a 224 px centre crop
    (shorter side resized to 256) on a 14 x 14 grid. A map whose peak is the grid cell where the
    square appears in the crop, drawn on the original, peaks on the square in the original."""
    rng = np.random.default_rng(0)
    photo = rng.integers(60, 120, (300, 420, 3), dtype=np.uint8)
    top, left, side = 170, 250, 30
    photo[top : top + side, left : left + side] = (255, 0, 0)
    pre = _pre(T.Resize(256), T.CenterCrop(224))
    crop = pre.to_image(pre(Image.fromarray(photo)))
    red = (crop[..., 0] > 200) & (crop[..., 1] < 60)
    rows, cols = np.nonzero(red)
    cell = (int(rows.mean()) // 16, int(cols.mean()) // 16)  # where the model sees the square
    maps = torch.zeros(1, 14, 14)
    maps[0, cell[0], cell[1]] = 1.0
    box = crop_box(pre, pre.mean, pre.std, photo.shape[:2])
    display = Display.of_original(photo, box)
    heat = display.heat(maps, mode="minmax")[0]
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    factor = photo.shape[0] / display.size[0]
    y, x = peak[0] * factor, peak[1] * factor
    assert top - 8 <= y <= top + side + 8 and left - 8 <= x <= left + side + 8, (y, x)
    # outside the crop the photo is dimmed, inside it is the overlay
    picture = display.overlay(display.heat(maps)[0])
    outside = ~display.inside()
    assert outside.any() and display.inside().any()
    np.testing.assert_allclose(picture[outside], np.round(display.image[outside] * DIM), atol=1)


@pytest.mark.parametrize("blend", ["fade", "paper"])
@pytest.mark.parametrize("cmap, alpha, image_weight", [("jet", 0.4, 0.8), ("viridis", 0.7, 0.5)])
def test_overlay_is_the_blend_in_the_box_and_the_dimmed_photo_outside(cmap, alpha, image_weight, blend):
    """Display.overlay (table lookups in float32) against the formula in float64, pixel by pixel:
    the paper's blend, or that blend faded to the photo by the heat (t = heat / 255)."""
    from vitflow.render.colormap import colormap_lut_uint8

    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    heat = rng.integers(0, 256, (61, 83), dtype=np.uint8)
    display = Display(photo, Box(top=-4.2, left=10.6, height=50.0, width=60.3))
    picture = display.overlay(heat, alpha, image_weight, cmap, blend=blend).astype(int)
    mixed = alpha * colormap_lut_uint8(cmap).astype(np.float64)[heat] + image_weight * photo
    if blend == "fade":
        t = heat[..., None] / 255.0
        mixed = t * mixed + (1 - t) * photo
    expected = np.where(display.inside()[..., None], np.clip(mixed, 0, 255), DIM * photo.astype(np.float64))
    assert np.abs(picture - expected).max() <= 0.5 + 1e-4  # rounded; float32 arithmetic
    # byte for byte the float32 sum formed per pixel (what the viewer's JavaScript does)
    lut = np.float32(alpha) * colormap_lut_uint8(cmap).astype(np.float32)
    base = photo.astype(np.float32)
    if blend == "fade":
        fade = np.arange(256, dtype=np.float32) / np.float32(255)
        weight = np.float32(1) + fade * (np.float32(image_weight) - np.float32(1))
        per_pixel = (fade[:, None] * lut)[heat] + weight[heat][..., None] * base
    else:
        per_pixel = lut[heat] + np.float32(image_weight) * base
    per_pixel = np.where(display.inside()[..., None], np.clip(per_pixel, 0, 255), base * np.float32(DIM))
    np.testing.assert_array_equal(picture, np.round(per_pixel).astype(np.uint8))
    assert display.inside()[0, 11:71].all() and not display.inside()[:, :11].any()  # it reaches out the top


def test_explain_draws_on_the_original_or_the_crop(tmp_path):
    """The command line: by default the pictures are the photo at display size (here enlarged to
    512 px) with the crop's box recorded; ``--on crop`` shows the crop; the index shows each
    image's final map."""
    from vitflow.cli import main
    from vitflow.data.scenes import generate_scene

    scene = generate_scene(3, 1).image
    wide = np.concatenate([scene, scene[:, :112]], axis=1)  # 224 x 336: the demo's crop is the centre
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert (
        main(["explain", str(tmp_path / "wide.png"), "--out", str(tmp_path / "a"), "--gif", "--display-size",
              "512", "--quiet"]) == 0
    )  # fmt: skip
    manifest = json.loads((tmp_path / "a" / "wide" / "manifest.json").read_text())
    assert manifest["render"]["on"] == "original" and manifest["render"]["display_size"] == [341, 512]
    box = manifest["render"]["crop_box"]  # the centre 224 x 224 of 336, scaled by 512 / 336
    assert box["left"] == pytest.approx(56 * 512 / 336, abs=2) and box["width"] == pytest.approx(341, abs=2)
    assert Image.open(tmp_path / "a" / "wide" / "flow.gif").size == (384, 256)  # at most 384 px
    assert "wide/final.jpg" in (tmp_path / "a" / "index.html").read_text()
    final = np.asarray(Image.open(tmp_path / "a" / "wide" / "final.jpg").convert("RGB"))
    assert final.shape == (341, 512, 3)
    assert main(["explain", str(tmp_path / "wide.png"), "--out", str(tmp_path / "b"), "--on", "crop",
                 "--display-size", "200", "--quiet"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "b" / "wide" / "manifest.json").read_text())
    assert manifest["render"]["on"] == "crop" and manifest["render"]["display_size"] == [200, 200]


@pytest.mark.parametrize("config", [
    dict(crop_pct=0.9, interpolation="bicubic"), dict(crop_pct=1.0, interpolation="bilinear"),
    dict(crop_pct=0.875, interpolation="bicubic", input_size=(3, 160, 160)),
])  # fmt: skip
def test_the_box_from_the_sizes_equals_the_probed_one(config):
    """``composed_box`` reads a torchvision Resize + CenterCrop from its sizes; the probe (a ramp
    image through the real transform, fitted) finds the same rectangle, for portrait, landscape,
    square, odd and tiny originals."""
    from timm.data import create_transform

    from vitflow.render.placement import composed_box

    full = {"input_size": (3, 224, 224), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), **config}
    transform = create_transform(**full, is_training=False)
    for size in [(480, 640), (640, 480), (300, 300), (1201, 517), (97, 1603), (225, 231), (40, 30)]:
        box = composed_box(transform, size)
        probed = crop_box(transform, full["mean"], full["std"], size)
        assert box is not None and probed is not None
        # the probe's ramp has 255 levels: its fit is good to a fraction of one ramp step
        tolerance = max(size) / 255 / 2
        for field in ("top", "left", "height", "width"):
            assert getattr(box, field) == pytest.approx(getattr(probed, field), abs=tolerance), (size, field)


def test_the_box_from_the_sizes_by_hand_and_what_is_left_to_the_probe():
    from torchvision import transforms as tv

    from vitflow.render.placement import composed_box

    def fields(box):
        return (box.top, box.left, box.height, box.width)

    # what the box is read from: a transform it does not know, or a crop larger than the image
    # (torchvision pads it), is probed instead
    assert composed_box(lambda image: image, (100, 100)) is None
    assert composed_box(tv.Compose([tv.Resize(64), tv.RandomCrop(32), tv.ToTensor()]), (100, 100)) is None
    assert composed_box(tv.Compose([tv.CenterCrop(224), tv.ToTensor()]), (100, 300)) is None
    assert composed_box(tv.Compose([tv.Resize(64, max_size=80), tv.ToTensor()]), (100, 300)) is None
    # by hand: 480 x 640 resized to a short side of 248 is 248 x 330 (330.67 truncated), and the
    # 224 x 224 centre of that starts at row 12, column 53 (106 / 2)
    hand = composed_box(tv.Compose([tv.Resize(248), tv.CenterCrop(224), tv.ToTensor()]), (480, 640))
    assert fields(hand) == pytest.approx((12 * 480 / 248, 53 * 640 / 330, 224 * 480 / 248, 224 * 640 / 330))
    exact = composed_box(tv.Compose([tv.Resize((50, 80)), tv.CenterCrop(40), tv.ToTensor()]), (100, 400))
    assert fields(exact) == pytest.approx((5 * 2.0, 20 * 5.0, 40 * 2.0, 40 * 5.0))  # 50 x 80, centre 40 x 40
