"""One image's explanation on disk.

By default what a person looks at, made to encode fast: ``final.jpg`` (the explanation on the
photo, labelled) and ``viewer.html`` (the attention flow, drawn by the browser from the maps and one
copy of the photo: ``viewer_html``), with ``manifest.json``; the maps themselves
go to the run's map shards (``vitflow.outputs.maps``). On request: ``flow.gif`` (at most
``GIF_SIZE`` pixels on its long side, one palette for all its frames; it costs three times the
rest of the bundle), ``input.png`` and every block's overlay (``blocks``), MP4, figures.

The folder is filled beside its place and renamed into it whole (``atomic_dir``); ``manifest.json``
is written last, so its presence means the folder is complete.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitflow.atomic import atomic_dir, json_bytes, write_staged
from vitflow.explainer.result import DAAMResult
from vitflow.render import encode_gif, label_frame, viewer_html
from vitflow.render.figure import flow_figure, save_figure
from vitflow.render.placement import Box, Display
from vitflow.render.video import write_mp4
from vitflow.version import __version__


@dataclass(frozen=True)
class RenderOptions:
    """How a bundle looks and which optional outputs it has (final.jpg and the manifest always)."""

    mode: str = "sigmoid"
    alpha: float = 0.4
    image_weight: float = 0.8
    cmap: str = "jet"
    #: "fade": the overlay fades to the photo where the map is low; "paper": the published overlay
    #: everywhere (``vitflow.render.overlay.BLENDS``)
    blend: str = "fade"
    gif_duration_ms: int = 400
    gif_loop: int = 0
    mp4: bool = False
    figure: bool = False
    figure_blocks: tuple[int, ...] | None = None
    #: write ``viewer.html`` (and the run's ``index.html``): the flow, drawn in the browser
    html: bool = True
    #: write ``flow.gif``, the flow as an animated GIF
    gif: bool = False
    #: draw on the "original" photo (the crop's box placed in it, the rest dimmed) or on the "crop"
    on: str = "original"
    #: long side of the pictures in pixels (default: ``vitflow.render.placement.display_size``)
    display_size: int | None = None
    #: also write ``input.png`` (the crop the model saw) and every block's overlay ``block_NN.png``
    blocks: bool = False
    #: long side of the GIF's frames (default: the display size, at most ``GIF_SIZE``)
    gif_size: int | None = None


#: the GIF's default long side: large enough to read, a quarter of the pixels of a 768 px picture
GIF_SIZE = 384
#: quality of ``final.jpg``: no visible blocking on overlays, a sixth of a PNG's bytes, 20x faster
JPEG_QUALITY = 90


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    """PNG bytes at zlib level 1: 35% less encoding time than Pillow's default level 6 (5.2 vs
    7.9 ms for a 224 px overlay) for files 10% larger; encoding is most of a bundle's cost."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _stats(maps: torch.Tensor) -> list[dict]:
    """Each block's map statistics, ``(L, h, w)`` -> ``L`` dicts, every block reduced at once (a
    reduction per statistic per block was most of ``describe``)."""
    flat = maps.detach().cpu().flatten(1)
    width = maps.shape[-1]
    columns = zip(
        flat.amax(1).tolist(), flat.mean(1).tolist(), flat.sum(1).tolist(),
        (flat > 0).float().mean(1).tolist(), flat.argmax(1).tolist(), strict=True,
    )  # fmt: skip
    return [
        {"max": most, "mean": mean, "sum": total, "nonzero_fraction": nonzero,
         "argmax": list(divmod(at, width))}
        for most, mean, total, nonzero, at in columns
    ]


def _class_entry(
    index: int, probs: torch.Tensor, logits: torch.Tensor | None, names: list[str] | None
) -> dict:
    entry = {
        "index": index,
        "name": names[index] if names and 0 <= index < len(names) else f"class {index}",
        "probability": float(probs[index]),
    }
    if logits is not None:
        entry["logit"] = float(logits[index])
    return entry


def describe(result: DAAMResult, names: list[str] | None = None, top: int = 5) -> dict:
    """The manifest fields that come from the result of one image (``len(result) == 1``).

    Class probabilities are the target's own (k-NN votes) when it defines them, else the softmax
    of the classifier's logits.
    """
    if len(result) != 1:
        raise ValueError(f"describe takes one image's result (result[i]), got a batch of {len(result)}")
    if result.probabilities is not None:
        probs, logits = result.probabilities[0].detach().double().cpu(), None
    else:
        logits = result.logits[0].detach().double().cpu()
        probs = logits.softmax(0)
    target = int(result.target[0])
    entry = _class_entry(target, probs, logits, names) if 0 <= target < probs.numel() else {"index": target}
    entry["score"] = float(result.score[0])
    top_k = probs.topk(min(top, probs.numel())).indices.tolist()
    return {
        "grid": list(result.grid),
        "prefix_tokens": result.prefix_tokens,
        "num_blocks": result.num_blocks,
        "target": entry,
        "top5": [_class_entry(i, probs, logits, names) for i in top_k],
        "blocks": [
            {"block": b + 1, "map": accumulated, "block_map": alone, "prefix_relevance": prefix}
            for b, (accumulated, alone, prefix) in enumerate(zip(
                _stats(result.maps[0]), _stats(result.block_maps[0]),
                result.relevance[0, :, : result.prefix_tokens].cpu().tolist(), strict=True,
            ))
        ],
    }


def write_bundle(
    out_dir: str | Path,
    image: np.ndarray,
    result: DAAMResult,
    metadata: dict,
    names: list[str] | None = None,
    options: RenderOptions = RenderOptions(),
    original: Image.Image | np.ndarray | None = None,
    box: Box | None = None,
    durable: bool = True,
) -> dict:
    """Write one image's explanation into ``out_dir``; returns the manifest. The folder appears
    whole or not at all (``atomic_dir``): filled beside it, then renamed.

    Args:
        out_dir: folder for this image (created; an older one is replaced).
        image: ``(H, W, 3)`` uint8, the input exactly as the model saw it (``input.png``).
        result: that image's result, ``result[i]`` of a batch.
        metadata: extra manifest fields (model, source image, preprocessing, ...).
        original: the photo the input was made from; with ``box`` (where the model's crop lies
            in it, ``crop_box``) and ``options.on == "original"``,
            overlays, GIF, MP4, figure and viewer are drawn on it. Otherwise on the crop.
        durable: the manifest on the disk before the folder is renamed into place (``fsync``);
            ``False`` where the caller makes its writes durable together (``explain_files``
            syncs each chunk's outputs before it records the chunk done).
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, last="manifest.json") as staging:
        return _write_files(staging, out_dir.name, image, result, metadata, names, options, original, box,
                            durable)  # fmt: skip


def _write_files(
    out_dir: Path, title: str, image: np.ndarray, result: DAAMResult, metadata: dict, names: list[str] | None,
    options: RenderOptions, original: Image.Image | np.ndarray | None, box: Box | None, durable: bool,
) -> dict:  # fmt: skip
    on_original = options.on == "original" and original is not None and box is not None
    if on_original:
        assert original is not None and box is not None  # on_original says so
        display = Display.of_original(original, box, options.display_size)
    else:
        display = Display.of_crop(image, options.display_size)
    manifest = {"vitflow_version": __version__, **metadata, **describe(result, names)}
    label = manifest["target"].get("name", "")
    last = result.num_blocks - 1

    def caption(b: int) -> str:  # which block, which class, which display normalisation
        return f"block {b + 1}/{result.num_blocks}  {label}  ({options.mode})"

    def picture(shown: Display, heat: np.ndarray) -> np.ndarray:
        return shown.overlay(heat, alpha=options.alpha, image_weight=options.image_weight, cmap=options.cmap,
                             blend=options.blend)  # fmt: skip

    files: dict[str, object] = {"final": "final.jpg"}
    # every block at the display size only when its pictures are asked for: the default draws the
    # final map there and the flow at the GIF's size
    every = options.blocks or options.mp4
    heat = display.heat(result.maps[0], mode=options.mode, blocks=None if every else [last])
    frames: list[Image.Image] = []  # every block's labelled frame at the display size
    block_files: list[str] = []
    if options.blocks:
        write_staged(out_dir / "input.png", _png(image))
        files.update(input="input.png", blocks=block_files)
    width = max(2, math.ceil(math.log10(result.num_blocks + 1)))
    for k, block_heat in enumerate(heat):
        b = k if every else last
        labelled = label_frame(picture(display, block_heat), caption(b))
        if options.blocks:
            name = f"block_{b + 1:0{width}d}.png"
            write_staged(out_dir / name, _png(np.asarray(labelled)))
            block_files.append(name)
            manifest["blocks"][b]["file"] = name
        if every:
            frames.append(labelled)
    final = frames[-1] if every else labelled
    write_staged(out_dir / "final.jpg", _jpeg(final))
    if options.gif:
        small = display.scaled(options.gif_size or GIF_SIZE)
        if every and small.size == display.size:
            flow = frames
        else:
            small_heat = small.heat(result.maps[0], mode=options.mode)
            flow = [label_frame(picture(small, h), caption(b)) for b, h in enumerate(small_heat)]
        gif = encode_gif(flow, options.gif_duration_ms, options.gif_loop)
        write_staged(out_dir / "flow.gif", gif)
        files["gif"] = "flow.gif"
    if options.mp4:
        write_mp4(frames, out_dir / "flow.mp4", fps=1000.0 / options.gif_duration_ms)
        files["mp4"] = "flow.mp4"
    if options.figure:
        title = f"{metadata.get('model', '')}: {label}"
        fig = flow_figure(display, result.maps[0], result.block_maps[0], blocks=options.figure_blocks,
                          cmap=options.cmap, title=title, blend=options.blend)  # fmt: skip
        files["figure"] = [p.name for p in save_figure(fig, out_dir / "figure")]
    if options.html:
        page = viewer_html(display, result.maps[0], result.block_maps[0], title=f"{title}: {label}",
                           target=label, top5=manifest["top5"], mode=options.mode, alpha=options.alpha,
                           image_weight=options.image_weight, cmap=options.cmap, blend=options.blend,
                           frame_ms=options.gif_duration_ms)  # fmt: skip
        write_staged(out_dir / "viewer.html", page.encode())
        files["html"] = "viewer.html"
    manifest["files"] = files
    manifest["render"] = {
        "on": "original" if on_original else "crop",
        "display_size": list(display.size),
        # where the model's input lies in the picture (pixels; may reach outside it)
        "crop_box": {k: round(v, 2) for k, v in asdict(display.box).items()},
        "mode": options.mode,
        "alpha": options.alpha,
        "image_weight": options.image_weight,
        "cmap": options.cmap,
        "blend": options.blend,
    }
    write_staged(out_dir / "manifest.json", json_bytes(manifest), durable=durable)
    return manifest
