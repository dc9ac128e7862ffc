"""A self-contained HTML viewer of one image's attention flow, and an index page for a run.

One file, no server, no network: the image and every heatmap are embedded as PNG data URIs,
colormaps as lookup tables, and a little JavaScript draws the overlay on a canvas. Controls: a
block slider, play/pause, accumulated vs per-block maps, overlay opacity, colormap; the top-5
predictions and a plot of per-block map statistics sit beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
from PIL import Image

from vitflow.render.colormap import colormap_lut
from vitflow.render.placement import DIM, as_display

VIEWER_COLORMAPS = ("jet", "inferno", "viridis", "gray")


def _png_data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _luts() -> dict[str, list[list[int]]]:
    luts = {}
    for name in VIEWER_COLORMAPS:
        try:
            table = np.linspace(0, 1, 256)[:, None].repeat(3, 1) if name == "gray" else colormap_lut(name)
        except ValueError:  # without matplotlib only jet and gray exist
            continue
        luts[name] = np.round(table * 255).astype(int).tolist()
    return luts


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
main { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
#view { image-rendering: auto; border: 1px solid #ccc; }
.controls { display: grid; grid-template-columns: auto 1fr; gap: 6px 10px; align-items: center;
            margin-top: 8px; }
table { border-collapse: collapse; font-size: 14px; } td { padding: 2px 8px; }
td.p { text-align: right; font-variant-numeric: tabular-nums; }
#label { font-weight: 600; }
svg text { font-size: 10px; }
</style>
</head>
<body>
<h2>__TITLE__</h2>
<main>
<section>
<canvas id="view" width="__W__" height="__H__" style="width: __CSS_W__px"></canvas>
<div id="label"></div>
<div class="controls">
<label for="block">block</label><input id="block" type="range" min="1" max="__L__" value="__L__">
<span></span><button id="play" type="button">play</button>
<label for="perblock">per-block maps</label><input id="perblock" type="checkbox">
<label for="opacity">opacity</label><input id="opacity" type="range" min="0" max="1" step="0.05" value="0.5">
<label for="cmap">colormap</label><select id="cmap">__CMAP_OPTIONS__</select>
</div>
</section>
<section>
<h3>Top-5</h3>
<table id="top5">__TOP5__</table>
<h3>Per-block maps</h3>
<svg id="stats" width="300" height="150" viewBox="0 0 300 150"></svg>
<p style="font-size:12px">solid: maximum of the accumulated map; dashed: maximum of the block's own map</p>
</section>
</main>
<script>
const DATA = __DATA__;
const view = document.getElementById("view");
const ctx = view.getContext("2d");
const controls = {
  block: document.getElementById("block"), play: document.getElementById("play"),
  perblock: document.getElementById("perblock"), opacity: document.getElementById("opacity"),
  cmap: document.getElementById("cmap"), label: document.getElementById("label"),
};
const W = __W__, H = __H__, L = __L__;
let imagePixels = null, inside = null, heats = {accumulated: [], block: []}, timer = null;

function pixelsOf(uri) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas"); c.width = W; c.height = H;
      const cc = c.getContext("2d"); cc.drawImage(img, 0, 0, W, H);
      resolve(cc.getImageData(0, 0, W, H).data);
    };
    img.onerror = reject;
    img.src = uri;
  });
}

function draw() {
  const b = Number(controls.block.value);
  const kind = controls.perblock.checked ? "block" : "accumulated";
  const heat = heats[kind][b - 1], lut = DATA.luts[controls.cmap.value];
  const a = Number(controls.opacity.value);
  const out = ctx.createImageData(W, H);
  for (let i = 0; i < W * H * 4; i += 4) {
    const colour = lut[heat[i]];
    if (inside[i] > 127) {
      for (let c = 0; c < 3; c++) out.data[i + c] = a * colour[c] + (1 - a) * imagePixels[i + c];
    } else {  // outside the model's crop: the photo, dimmed
      for (let c = 0; c < 3; c++) out.data[i + c] = DATA.dim * imagePixels[i + c];
    }
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  const what = kind === "block" ? "block map" : "accumulated map";
  controls.label.textContent = `${what}, block ${b}/${L}: ${DATA.target}`;
  view.dataset.frame = `${kind}-${b}-${controls.cmap.value}-${a}`;
  const marker = document.getElementById("marker");
  if (marker) { const x = xOf(b); marker.setAttribute("x1", x); marker.setAttribute("x2", x); }
}

function xOf(b) { return 30 + (L === 1 ? 0 : (b - 1) * 260 / (L - 1)); }

function plotStats() {
  const svg = document.getElementById("stats");
  const top = Math.max(...DATA.stats.map_max, ...DATA.stats.block_max, 1e-12);
  const y = v => 130 - 115 * v / top;
  const line = (values, dash) => `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" ${dash}
    points="${values.map((v, i) => `${xOf(i + 1)},${y(v)}`).join(" ")}"/>`;
  svg.innerHTML = `<line x1="30" y1="130" x2="290" y2="130" stroke="#888"/>
    <line x1="30" y1="10" x2="30" y2="130" stroke="#888"/>
    <text x="30" y="145">1</text><text x="280" y="145">${L}</text><text x="0" y="15">max</text>
    ${line(DATA.stats.map_max, "")}${line(DATA.stats.block_max, 'stroke-dasharray="4 3"')}
    <line id="marker" x1="0" y1="10" x2="0" y2="130" stroke="#d62728"/>`;
}

function togglePlay() {
  if (timer) { clearInterval(timer); timer = null; controls.play.textContent = "play"; return; }
  controls.play.textContent = "pause";
  timer = setInterval(() => {
    controls.block.value = Number(controls.block.value) % L + 1;
    draw();
  }, DATA.frame_ms);
}

async function start() {
  imagePixels = await pixelsOf(DATA.image);
  inside = await pixelsOf(DATA.inside);
  heats.accumulated = await Promise.all(DATA.accumulated.map(pixelsOf));
  heats.block = await Promise.all(DATA.per_block.map(pixelsOf));
  for (const el of [controls.block, controls.perblock, controls.opacity, controls.cmap]) {
    el.addEventListener("input", draw);
    el.addEventListener("change", draw);
  }
  controls.play.addEventListener("click", togglePlay);
  plotStats();
  draw();
  document.body.dataset.ready = "1";
}
start();
</script>
</body>
</html>
"""


def viewer_html(
    image,
    maps,
    block_maps,
    *,
    title: str,
    target: str,
    top5: list[dict] | None = None,
    mode: str = "sigmoid",
    frame_ms: int = 500,
) -> str:
    """The viewer page for one image.

    Args:
        image: the input as the model saw it (``(H, W, 3)`` uint8, float in [0, 1], or PIL), or a
            :class:`~vitflow.render.placement.Display` (the original photo with the crop's box;
            outside it the photo is shown dimmed).
        maps: ``(L, h, w)`` accumulated maps; shown with display normalisation ``mode``.
        block_maps: ``(L, h, w)`` per-block maps; shown on their common scale.
        title: page title; ``target``: the explained class, shown under the image.
        top5: ``[{"name": ..., "probability": ...}, ...]`` (as in ``manifest.json``).
    """
    display = as_display(image)
    rgb = display.image
    size = rgb.shape[:2]
    accumulated = display.heat(maps, mode=mode)
    per_block = display.block_heat(block_maps)
    raw_maps = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=np.float64)
    raw_blocks = np.asarray(
        block_maps.detach().cpu() if hasattr(block_maps, "detach") else block_maps, np.float64
    )
    luts = _luts()
    data = {
        "image": _png_data_uri(rgb),
        "inside": _png_data_uri((display.inside() * 255).astype(np.uint8)),
        "dim": DIM,
        "accumulated": [_png_data_uri(h) for h in accumulated],
        "per_block": [_png_data_uri(h) for h in per_block],
        "luts": luts,
        "target": target,
        "frame_ms": frame_ms,
        "stats": {
            "map_max": raw_maps.reshape(len(raw_maps), -1).max(1).tolist(),
            "block_max": raw_blocks.reshape(len(raw_blocks), -1).max(1).tolist(),
        },
    }
    rows = "".join(
        f'<tr><td>{html.escape(str(entry["name"]))}</td><td class="p">{entry["probability"]:.3f}</td></tr>'
        for entry in (top5 or [])
    )
    options = "".join(f'<option value="{name}">{name}</option>' for name in luts)
    page = _TEMPLATE
    for key, value in {
        "__TITLE__": html.escape(title),
        "__CSS_W__": str(min(max(size[1], 384), 900)),
        "__W__": str(size[1]),
        "__H__": str(size[0]),
        "__L__": str(len(accumulated)),
        "__CMAP_OPTIONS__": options,
        "__TOP5__": rows,
        "__DATA__": json.dumps(data).replace("</", "<\\/"),
    }.items():
        page = page.replace(key, value)
    return page


def index_html(entries: list[dict], title: str = "vitflow run") -> str:
    """An index page linking per-image viewers: ``entries`` of ``{"name", "viewer", "thumbnail",
    "target"}`` with paths relative to the index file."""
    items = "".join(
        f'<li><a href="{html.escape(e["viewer"])}"><img src="{html.escape(e["thumbnail"])}" width="160" '
        f'alt=""><br>{html.escape(e["name"])}</a><br><small>{html.escape(e["target"])}</small></li>'
        for e in entries
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:16px}ul{display:flex;flex-wrap:wrap;gap:16px;"
        "list-style:none;padding:0}li{text-align:center;font-size:14px}</style>\n</head>\n<body>\n"
        f"<h2>{html.escape(title)}</h2>\n<ul>{items}</ul>\n</body>\n</html>\n"
    )
