"""``vitflow app``: a local web app (Gradio) to explore the attention flow of one image.

``Session`` is the app without the web: one model loaded once and shared, a lock so that
concurrent requests never run it at once, and the pictures for every control (block, accumulated
or per-block maps, colormap, opacity, a baseline beside DAAM). ``build_app`` puts Gradio
around it; Gradio and its dependencies are the ``app`` extra.
"""

from __future__ import annotations

import io
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitflow.data.images import ImageLoadError, read_image
from vitflow.explainer.daam import DAAM
from vitflow.explainer.result import DAAMResult
from vitflow.methods import baseline_names
from vitflow.outputs.bundle import RenderOptions, write_bundle
from vitflow.render.placement import Box, CropBoxes, Display

PREDICTED = "predicted class"
NO_BASELINE = "none"


#: the overlay's weights: the command line's defaults (``--alpha``, ``--image-weight``)
ALPHA, IMAGE_WEIGHT, BLEND = RenderOptions.alpha, RenderOptions.image_weight, RenderOptions.blend


def caption(explained: Explained, block: int, kind: str) -> str:
    """What a picture shows: which map, after which block, for which class."""
    what = "the block's own map" if kind == "per block" else "accumulated map"
    return f"DAAM: {what}, block {block} of {explained.result.num_blocks}: {explained.label}"


#: long side of the upload's preview and of the example thumbnails
PREVIEW_SIZE = 256


class AppError(ValueError):
    """A request the app cannot serve; its message is shown in the page."""


@dataclass
class Explained:
    """One image's explanation, kept while its controls move."""

    source: str
    original: Image.Image
    crop: np.ndarray
    x: torch.Tensor
    result: DAAMResult
    box: Box | None  # where the model's crop lies in the original (None: not a resize-and-crop)
    display: Display
    label: str
    top5: list[tuple[str, float]]
    heats: dict = field(default_factory=dict)  # (kind, mode) -> (L, H, W) uint8
    baselines: dict = field(default_factory=dict)  # name -> (H, W) uint8


class Session:
    """A model loaded once for every request of the app."""

    def __init__(
        self, loaded, bank=None, device: str | torch.device = "cpu", display_size: int | None = None
    ) -> None:
        self.loaded, self.bank, self.device = loaded, bank, torch.device(device)
        self.model = loaded.model.eval().to(self.device)
        self.names = list(bank.class_names) if bank is not None else list(loaded.names or [])
        self.display_size = display_size
        self.lock = threading.Lock()  # one request runs the model at a time
        self.boxes = CropBoxes(loaded.preprocessing)
        from vitflow.adapters import resolve_adapter
        from vitflow.methods.run import applicable_methods

        adapter = resolve_adapter(self.model)
        self.num_blocks = len(adapter.sites())
        #: the baselines this model can run (LeGrad needs a readout, CP-LRP timm or MHA attention)
        self.baselines = applicable_methods(adapter, baseline_names())[0]

    @property
    def choices(self) -> list[str]:
        return [PREDICTED, *self.names]

    def _target(self, choice: str):
        if self.bank is not None:
            from vitflow.targets import KNNTarget, ReferenceTarget
            from vitflow.targets.knn import DEFAULT_K

            if choice in (None, "", PREDICTED):
                return KNNTarget(self.bank, k=min(DEFAULT_K, len(self.bank)))
            index = self.names.index(choice)
            return ReferenceTarget(self.bank.features[self.bank.labels == index].float())
        if choice in (None, "", PREDICTED):
            return None
        if choice not in self.names:
            raise AppError(f"unknown class {choice!r}; pick one from the list")
        return self.names.index(choice)

    @staticmethod
    def read(path: str | Path):
        """The uploaded file as vitflow reads every image (EXIF orientation, modes, bomb guard); one
        line of error, naming the file and not the upload's temporary path, for anything else."""
        if not path:
            raise AppError("upload an image first (or pick an example)")
        try:
            return read_image(path)
        except ImageLoadError as error:
            raise AppError(str(error).replace(str(path), Path(path).name)) from None

    def preview(self, path: str | Path, size: int = PREVIEW_SIZE) -> np.ndarray:
        """``(H, W, 3)`` uint8: the uploaded image as the model will read it, long side ``size``."""
        image = self.read(path).image.copy()
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image.convert("RGB"))

    def explain(self, path: str | Path, choice: str = PREDICTED) -> Explained:
        """Read the uploaded file (one line of error for anything that is not an image) and explain it."""
        loaded = self.read(path)
        pre = self.loaded.preprocessing
        x = pre(loaded.image)[None].to(self.device)
        with self.lock, DAAM(self.model) as daam:
            result = daam(x, target=self._target(choice)).to("cpu")
        box = self.boxes.box(loaded.image.height, loaded.image.width)
        crop = pre.to_image(x[0].cpu())
        display = (
            Display.of_original(loaded.image, box, self.display_size)
            if box is not None
            else Display.of_crop(crop, self.display_size)
        )
        probs = result.probabilities[0] if result.probabilities is not None else result.logits[0].softmax(0)
        top = probs.topk(min(5, probs.numel()))
        name = lambda i: self.names[i] if 0 <= i < len(self.names) else f"class {i}"  # noqa: E731
        top5 = [(name(int(i)), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
        target = int(result.target[0])
        label = name(target) if target >= 0 else (choice or "")
        return Explained(str(path), loaded.image, crop, x.cpu(), result, box, display, label, top5)

    def heat(self, explained: Explained, kind: str, mode: str = "sigmoid") -> np.ndarray:
        """``(L, H, W)`` uint8 heatmaps on the picture: ``kind`` "accumulated" or "per block"."""
        key = (kind, mode)
        if key not in explained.heats:
            result, display = explained.result, explained.display
            if kind == "per block":
                explained.heats[key] = display.block_heat(result.block_maps[0])
            else:
                explained.heats[key] = display.heat(result.maps[0], mode=mode)
        return explained.heats[key]

    def picture(
        self,
        explained: Explained,
        block: int,
        kind: str = "accumulated",
        cmap: str = "jet",
        opacity: float = ALPHA,
    ) -> np.ndarray:
        """The overlay for ``block`` (1-based), as the command line and the viewer draw it:
        ``opacity * cmap(heat) + 0.8 * image`` inside the crop (the map's weight; the photo's is
        the command line's ``--image-weight``), the photo dimmed outside."""
        heats = self.heat(explained, kind)
        if not 1 <= block <= len(heats):
            raise AppError(f"block must be 1..{len(heats)}")
        heat = heats[block - 1]
        return explained.display.overlay(heat, opacity, IMAGE_WEIGHT, cmap, blend=BLEND)

    def baseline(
        self, explained: Explained, name: str, cmap: str = "jet", opacity: float = ALPHA
    ) -> np.ndarray | None:
        """A baseline method's map for the same image and class, drawn the same way."""
        if name in (None, "", NO_BASELINE):
            return None
        if name not in explained.baselines:
            from vitflow.adapters import resolve_adapter
            from vitflow.methods.run import explain_all

            target = explained.result.target.clamp_min(0).to(self.device)
            with self.lock:
                maps = explain_all(resolve_adapter(self.model), explained.x.to(self.device), target, [name])[
                    name
                ]
            explained.baselines[name] = explained.display.heat(maps.cpu()[0][None].float(), mode="minmax")[0]
        heat = explained.baselines[name]
        return explained.display.overlay(heat, opacity, IMAGE_WEIGHT, cmap, blend=BLEND)

    def stats(self, explained: Explained) -> list[list]:
        """Per block: the accumulated map's maximum, the block map's maximum, the block's share of
        the final map's mass."""
        result = explained.result
        total = float(result.block_maps[0].sum()) or 1.0
        return [
            [b + 1, round(float(result.maps[0, b].max()), 5), round(float(result.block_maps[0, b].max()), 5),
             round(float(result.block_maps[0, b].sum()) / total, 3)]
            for b in range(result.num_blocks)
        ]  # fmt: skip

    def bundle(self, explained: Explained, folder: str | Path) -> Path:
        """A zip of the explanation's files (overlays, GIF, manifest, viewer, raw maps)."""
        folder = Path(folder)
        name = Path(explained.source).stem or "image"
        options = RenderOptions(gif=True, display_size=self.display_size)
        box = explained.box
        fields = {"model": self.loaded.label, "image": explained.source}
        names = self.names or None
        write_bundle(
            folder / name, explained.crop, explained.result, fields, names, options, explained.original, box
        )
        from safetensors.torch import save

        raw = save(
            {
                "maps": explained.result.maps[0].contiguous(),
                "block_maps": explained.result.block_maps[0].contiguous(),
            }
        )
        (folder / name / "maps.safetensors").write_bytes(raw)
        archive = folder / f"{name}_vitflow.zip"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted((folder / name).iterdir()):
                zipped.write(path, f"{name}/{path.name}")
        archive.write_bytes(buffer.getvalue())
        return archive

    def gif(
        self, explained: Explained, folder: str | Path, cmap: str = "jet", opacity: float = ALPHA
    ) -> Path:
        from vitflow.render import encode_gif, label_frame

        frames = [
            label_frame(
                self.picture(explained, b, "accumulated", cmap, opacity), f"block {b}  {explained.label}"
            )
            for b in range(1, explained.result.num_blocks + 1)
        ]
        path = Path(folder) / f"flow_{abs(hash((explained.source, cmap, opacity)))}.gif"
        path.write_bytes(encode_gif(frames))
        return path


def build_app(session: Session, examples: list[str] | None = None, title: str = "vitflow"):
    """The Gradio app around ``session``."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("vitflow app needs Gradio: pip install 'vitflow[app]'") from None
    from vitflow.render.colormap import available_colormaps

    workdir = Path(tempfile.mkdtemp(prefix="vitflow-app-"))

    def run(path, choice, kind, cmap, opacity, baseline):
        try:
            explained = session.explain(path, choice)
        except AppError as error:
            return (
                None,
                gr.update(),
                None,
                None,
                [],
                f"**Could not explain this file:** {error}",
                None,
                None,
            )
        last = explained.result.num_blocks
        picture = gr.update(value=session.picture(explained, last, kind, cmap, opacity),
                            label=caption(explained, last, kind))  # fmt: skip
        base = session.baseline(explained, baseline, cmap, opacity)
        top5 = {name: p for name, p in explained.top5}
        message = f"Explained **{explained.label}** with {session.loaded.label}; {last} blocks."
        return (explained, gr.update(maximum=last, value=last), picture, base, session.stats(explained),
                message, top5, None)  # fmt: skip

    def redraw(explained, block, kind, cmap, opacity, baseline):
        if explained is None:
            return None, None
        block = int(min(max(block, 1), explained.result.num_blocks))
        picture = gr.update(value=session.picture(explained, block, kind, cmap, opacity),
                            label=caption(explained, block, kind))  # fmt: skip
        return picture, session.baseline(explained, baseline, cmap, opacity)

    def animate(explained, cmap, opacity):
        if explained is None:
            return None
        return str(session.gif(explained, workdir, cmap, opacity))

    def download(explained):
        if explained is None:
            return None
        return str(session.bundle(explained, Path(tempfile.mkdtemp(dir=workdir))))

    def preview(path):
        if not path:
            return None, ""
        try:
            return session.preview(path), ""
        except AppError as error:
            return None, f"**Could not read this file:** {error}"

    def pick(event):
        return (examples or [])[event.index]

    pick.__annotations__ = {"event": gr.SelectData}  # Gradio passes the selection by this annotation

    with gr.Blocks(title=title) as app:
        gr.Markdown(
            f"# {title}: the attention flow of a Vision Transformer\nModel: `{session.loaded.label}`. "
            "Upload an image, pick the class to explain, and move through the blocks."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                # a file box, not an image box: every file reaches vitflow's reader, which names what
                # is wrong with it; the preview shows the image as that reader reads it
                upload = gr.File(label="image", file_count="single", type="filepath", elem_id="upload")
                shown_upload = gr.Image(label="preview", type="numpy", interactive=False, elem_id="preview",
                                        height=PREVIEW_SIZE)  # fmt: skip
                gallery = None
                if examples:
                    gallery = gr.Gallery(
                        [(path, Path(path).stem) for path in examples], label="examples (click one)",
                        columns=len(examples), height="auto", allow_preview=False,
                        elem_id="examples",
                    )  # fmt: skip
                choice = gr.Dropdown(
                    session.choices, value=PREDICTED, label="class to explain", elem_id="choice"
                )
                explain = gr.Button("Explain", variant="primary", elem_id="explain")
                status = gr.Markdown("", elem_id="status")
                top5 = gr.Label(label="top-5", num_top_classes=5)
            with gr.Column(scale=2):
                blocks = session.num_blocks  # the model's, before the first explanation too
                block = gr.Slider(1, blocks, value=blocks, step=1, label="block", elem_id="block")
                with gr.Row():
                    kind = gr.Radio(
                        ["accumulated", "per block"], value="accumulated", label="maps", elem_id="kind"
                    )
                    cmap = gr.Dropdown(available_colormaps(), value="jet", label="colormap")
                    opacity = gr.Slider(0, 1, value=ALPHA, step=0.05, label="map weight", elem_id="opacity")
                    baseline = gr.Dropdown(
                        [NO_BASELINE, *session.baselines], value=NO_BASELINE, label="baseline beside DAAM"
                    )
                with gr.Row():
                    shown = gr.Image(
                        label="DAAM: the accumulated map after each block", type="numpy", format="png",
                        elem_id="daam", interactive=False,
                    )  # fmt: skip
                    beside = gr.Image(label="baseline", type="numpy", format="png", elem_id="baseline",
                                      interactive=False)  # fmt: skip
                with gr.Row():
                    play = gr.Button("Animate (GIF)")
                    bundle = gr.Button("Download the bundle")
                flow = gr.Image(label="flow", type="filepath", interactive=False)
                files = gr.File(label="bundle (PNGs, GIF, manifest, viewer, raw maps)", elem_id="bundle")
                stats = gr.Dataframe(headers=["block", "accumulated max", "block max", "block share"],
                                     label="per-block statistics", interactive=False)  # fmt: skip
        controls: list[gr.Slider | gr.Radio | gr.Dropdown] = [block, kind, cmap, opacity, baseline]
        outputs = [state, block, shown, beside, stats, status, top5, flow]
        explain.click(run, [upload, choice, kind, cmap, opacity, baseline], outputs, concurrency_limit=1)
        upload.change(preview, [upload], [shown_upload, status], concurrency_limit=1)
        if gallery is not None:
            gallery.select(pick, None, [upload])
        for control in controls:
            control.change(redraw, [state, *controls], [shown, beside], concurrency_limit=1)
        play.click(animate, [state, cmap, opacity], [flow], concurrency_limit=1)
        bundle.click(download, [state], [files], concurrency_limit=1)
    app.queue(default_concurrency_limit=1)
    return app
