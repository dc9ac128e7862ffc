"""A self-contained HTML viewer of one image's attention flow, and an index page for a run.

One file, no server, no network. The viewer holds one copy of the photo (a JPEG data URI) and the
raw maps (float32, base64); the browser draws every overlay on a canvas with the library's own
arithmetic: the display normalisation of ``vitflow.render.normalize``, the bilinear resize into
the model's crop (half-pixel centres), the colormap tables and the blend of
``overlay`` in float32, rounded half to even. So a viewer
costs one JPEG to encode, and what it draws equals the library's picture of the same photo.
Controls: a block slider, play/pause, accumulated vs per-block maps, display normalisation,
overlay weight, colormap; the top-5 predictions and a plot of per-block map statistics beside it.

The index lists a run's images a page at a time (thumbnails load lazily), with a filter by name or
class, so a run of 50,000 images opens as fast as one of 50.
"""

from __future__ import annotations

import base64
import html
import io
import json
from functools import lru_cache

import numpy as np
from PIL import Image

from vitflow.render.colormap import colormap_lut_uint8
from vitflow.render.normalize import MODES
from vitflow.render.overlay import BLENDS, FADE, check_blend
from vitflow.render.placement import DIM, as_display

VIEWER_COLORMAPS = ("jet", "inferno", "viridis", "gray")
#: quality of the viewer's photo: one copy, decoded by the browser exactly as Pillow decodes it
PHOTO_QUALITY = 90
#: images per page of the index
INDEX_PAGE = 120
#: the long side a viewer shows a smaller picture at on the screen (the browser enlarges it: the
#: file keeps the picture's own pixels), and the widest it is shown
VIEW_MIN, VIEW_MAX = 512, 900


def _jpeg_data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=PHOTO_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _floats(maps) -> str:
    """``(L, h, w)`` maps as base64 little-endian float32 (what the library's maps are)."""
    array = np.ascontiguousarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype="<f4")
    return "data:application/octet-stream;base64," + base64.b64encode(array.tobytes()).decode("ascii")


@lru_cache(maxsize=8)
def _tables(first: str) -> tuple[tuple[str, ...], str]:
    """The colormaps a viewer offers and the JSON members of its tables (``"luts": ..., "fade":
    ...``), written once per first colormap: serialising them cost a third of a viewer."""
    luts = _luts(first)
    return tuple(luts), json.dumps({"luts": luts, "fade": FADE.tolist()})[1:-1]


def _luts(first: str) -> dict[str, list[list[int]]]:
    """The uint8 colormap tables the library draws with, ``first`` (the run's) first."""
    luts = {}
    for name in dict.fromkeys((first, *VIEWER_COLORMAPS)):
        try:
            table = np.repeat(np.arange(256)[:, None], 3, 1) if name == "gray" else colormap_lut_uint8(name)
        except ValueError:  # without matplotlib only jet and gray exist
            continue
        luts[name] = np.asarray(table, dtype=int).tolist()
    return luts


_VIEWER = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
main { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
#view { image-rendering: auto; border: 1px solid #ccc; max-width: 100%; }
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
<label for="mode">display</label><select id="mode">__MODE_OPTIONS__</select>
<label for="opacity">map weight</label>
<input id="opacity" type="range" min="0" max="1" step="0.05" value="__ALPHA__">
<label for="cmap">colormap</label><select id="cmap">__CMAP_OPTIONS__</select>
<label for="blend">blend</label><select id="blend">__BLEND_OPTIONS__</select>
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
"use strict";
const DATA = __DATA__;
const view = document.getElementById("view");
const ctx = view.getContext("2d");
const controls = {
  block: document.getElementById("block"), play: document.getElementById("play"),
  perblock: document.getElementById("perblock"), mode: document.getElementById("mode"),
  opacity: document.getElementById("opacity"), cmap: document.getElementById("cmap"),
  blend: document.getElementById("blend"), label: document.getElementById("label"),
};
const W = DATA.width, H = DATA.height, L = DATA.blocks, h = DATA.grid[0], w = DATA.grid[1];
const [TOP, LEFT, BOTTOM, RIGHT] = DATA.box;
const f32 = Math.fround;
let photo = null, timer = null;
const cache = {};

function floats(uri) {
  const bytes = Uint8Array.from(atob(uri.slice(uri.indexOf(",") + 1)), c => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}
const MAPS = {accumulated: floats(DATA.maps), block: floats(DATA.block_maps)};

/* numpy's rounding: half to even */
function rint(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}
/* vitflow.render.normalize: 255 * unit, clipped, truncated; x / 0 is 0 */
const toByte = unit => Math.trunc(Math.min(Math.max(255 * unit, 0), 255));
const divide = (a, b) => (b !== 0 ? a / b : 0);
function range(values, b) {
  let lo = Infinity, hi = -Infinity;
  for (let i = b * h * w; i < (b + 1) * h * w; i++) {
    lo = Math.min(lo, values[i]); hi = Math.max(hi, values[i]);
  }
  return [lo, hi];
}
function normalise(mode) {  /* accumulated maps -> (L, h, w) bytes on the grid, the whole sequence at once */
  const m = MAPS.accumulated, n = h * w, out = new Uint8Array(L * n);
  const [gMin, gMax] = range(m, L - 1);
  if (mode === "sigmoid") {
    const z = Float64Array.from(m, v => 1 / (1 + Math.exp(-5 * divide(v, gMax))) - 0.5);
    for (let b = 0; b < L; b++) {
      const [lo, hi] = range(z, b);
      for (let i = b * n; i < (b + 1) * n; i++) out[i] = toByte(divide(z[i] - lo, hi - lo));
    }
  } else {
    for (let b = 0; b < L; b++) {
      const [lo, hi] = range(m, b);
      for (let i = b * n; i < (b + 1) * n; i++) {
        out[i] = mode === "global"
          ? toByte(divide(hi - lo, gMax - gMin) * Math.max((m[i] - gMin) / (hi - gMin + 1e-10), 0))
          : toByte(divide(m[i] - lo, hi - lo));
      }
    }
  }
  return out;
}
function commonScale() {  /* per-block maps on one scale, their joint maximum at 255 */
  const m = MAPS.block, top = m.reduce((a, v) => Math.max(a, v), -Infinity);
  return Uint8Array.from(m, v => toByte(divide(v, top)));
}
/* bilinear resize of one (h, w) byte map to the crop's box (torch's align_corners=False), placed */
/* in the picture; 0 outside the box */
function place(bytes, b) {
  const bh = BOTTOM - TOP, bw = RIGHT - LEFT, out = new Uint8Array(W * H);
  const axis = (size, inSize) => Array.from({length: size}, (_, d) => {
    const s = Math.max((inSize / size) * (d + 0.5) - 0.5, 0), i0 = Math.floor(s);
    return [i0, Math.min(i0 + 1, inSize - 1), s - i0];
  });
  const ys = axis(bh, h), xs = axis(bw, w), base = b * h * w;
  for (let y = Math.max(TOP, 0); y < Math.min(BOTTOM, H); y++) {
    const [y0, y1, ly] = ys[y - TOP];
    for (let x = Math.max(LEFT, 0); x < Math.min(RIGHT, W); x++) {
      const [x0, x1, lx] = xs[x - LEFT];
      const v = (1 - ly) * ((1 - lx) * bytes[base + y0 * w + x0] + lx * bytes[base + y0 * w + x1])
              + ly * ((1 - lx) * bytes[base + y1 * w + x0] + lx * bytes[base + y1 * w + x1]);
      out[y * W + x] = Math.min(Math.max(rint(v), 0), 255);
    }
  }
  return out;
}
function heat(kind, mode, b) {
  const key = kind === "block" ? "block" : mode;
  if (!cache[key]) cache[key] = {bytes: kind === "block" ? commonScale() : normalise(mode), placed: []};
  const entry = cache[key];
  if (!entry.placed[b]) entry.placed[b] = place(entry.bytes, b);
  return entry.placed[b];
}

function pixelsOf(uri) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas"); c.width = W; c.height = H;
      const cc = c.getContext("2d"); cc.drawImage(img, 0, 0);
      resolve(cc.getImageData(0, 0, W, H).data);
    };
    img.onerror = reject;
    img.src = uri;
  });
}

/* Display.overlay in float32 where the model looked: "paper" alpha * cmap(heat) + image_weight * */
/* photo; "fade" t * (alpha * cmap(heat)) + (1 + t * (image_weight - 1)) * photo, t = */
/* DATA.fade[heat]; clipped and rounded; the photo dimmed elsewhere */
function draw() {
  const b = Number(controls.block.value), mode = controls.mode.value;
  const kind = controls.perblock.checked ? "block" : "accumulated";
  const lut = DATA.luts[controls.cmap.value], a = f32(Number(controls.opacity.value));
  const wi = f32(DATA.image_weight), dim = f32(DATA.dim), fade = controls.blend.value === "fade";
  const t = DATA.fade.map(f32);
  const weighted = lut.map((colour, k) => colour.map(c => fade ? f32(t[k] * f32(a * c)) : f32(a * c)));
  const weights = t.map(tk => fade ? f32(1 + f32(tk * f32(wi - 1))) : wi);
  const hm = heat(kind, mode, b - 1), out = ctx.createImageData(W, H);
  for (let y = 0; y < H; y++) {
    const inY = y >= TOP && y < BOTTOM;
    for (let x = 0; x < W; x++) {
      const p = y * W + x, i = 4 * p;
      if (inY && x >= LEFT && x < RIGHT) {
        const colour = weighted[hm[p]], wp = weights[hm[p]];
        for (let c = 0; c < 3; c++) {
          out.data[i + c] = rint(Math.min(Math.max(f32(colour[c] + f32(wp * photo[i + c])), 0), 255));
        }
      } else {
        for (let c = 0; c < 3; c++) out.data[i + c] = rint(f32(photo[i + c] * dim));
      }
      out.data[i + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
  const what = kind === "block" ? "block map" : `accumulated map (${mode})`;
  controls.label.textContent = `${what}, block ${b}/${L}: ${DATA.target}`;
  const look = `${controls.cmap.value}-${controls.opacity.value}-${mode}-${controls.blend.value}`;
  view.dataset.frame = `${kind}-${b}-${look}`;
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
  photo = await pixelsOf(DATA.photo);
  for (const el of [controls.block, controls.perblock, controls.mode, controls.opacity, controls.cmap,
                    controls.blend]) {
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
    alpha: float = 0.4,
    image_weight: float = 0.8,
    cmap: str = "jet",
    blend: str = "fade",
    frame_ms: int = 500,
) -> str:
    """The viewer page for one image.

    Args:
        image: the input as the model saw it (``(H, W, 3)`` uint8, float in [0, 1], or PIL), or a
            ``Display`` (the original photo with the crop's box;
            outside it the photo is shown dimmed).
        maps: ``(L, h, w)`` accumulated maps; first shown with display normalisation ``mode``.
        block_maps: ``(L, h, w)`` per-block maps; shown on their common scale.
        title: page title; ``target``: the explained class, shown under the image.
        top5: ``[{"name": ..., "probability": ...}, ...]`` (as in ``manifest.json``).
        alpha, image_weight, cmap, blend: the overlay's first settings (the command line's).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    display = as_display(image)
    height, width = display.size
    grid = tuple(np.shape(maps)[-2:])
    if np.shape(maps) != np.shape(block_maps) or len(np.shape(maps)) != 3:
        shapes = f"{tuple(np.shape(maps))} and {tuple(np.shape(block_maps))}"
        raise ValueError(f"maps and block_maps must both be one image's (L, h, w), got {shapes}")
    raw_maps, raw_blocks = (np.asarray(m.detach().cpu() if hasattr(m, "detach") else m, np.float64)
                            for m in (maps, block_maps))  # fmt: skip
    colormaps, tables = _tables(cmap)
    data = {
        "photo": _jpeg_data_uri(display.image),
        "width": width, "height": height, "blocks": len(raw_maps), "grid": grid,
        "box": list(display.box_pixels()),
        "maps": _floats(maps), "block_maps": _floats(block_maps),
        "dim": DIM, "image_weight": image_weight, "target": target, "frame_ms": frame_ms,
        "stats": {
            "map_max": raw_maps.reshape(len(raw_maps), -1).max(1).tolist(),
            "block_max": raw_blocks.reshape(len(raw_blocks), -1).max(1).tolist(),
        },
    }  # fmt: skip
    rows = "".join(
        f'<tr><td>{html.escape(str(entry["name"]))}</td><td class="p">{entry["probability"]:.3f}</td></tr>'
        for entry in (top5 or [])
    )
    page = _VIEWER
    for key, value in {
        "__TITLE__": html.escape(title),
        "__CSS_W__": str(min(round(width * max(1.0, VIEW_MIN / max(width, height))), VIEW_MAX)),
        "__W__": str(width),
        "__H__": str(height),
        "__L__": str(len(raw_maps)),
        "__ALPHA__": str(alpha),
        "__MODE_OPTIONS__": _options(MODES, mode),
        "__CMAP_OPTIONS__": _options(colormaps, cmap),
        "__BLEND_OPTIONS__": _options(BLENDS, check_blend(blend)),
        "__TOP5__": rows,
        "__DATA__": (json.dumps(data)[:-1] + ", " + tables + "}").replace("</", "<\\/"),
    }.items():
        page = page.replace(key, value)
    return page


def _options(names, selected: str) -> str:
    return "".join(
        f'<option value="{name}"{" selected" if name == selected else ""}>{name}</option>' for name in names
    )


_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 16px; }
nav { display: flex; gap: 12px; align-items: center; margin-bottom: 12px; }
ul { display: flex; flex-wrap: wrap; gap: 16px; list-style: none; padding: 0; }
li { text-align: center; font-size: 14px; width: 160px; overflow-wrap: anywhere; }
img { width: 160px; height: auto; background: #eee; }
</style>
</head>
<body>
<h2>__TITLE__</h2>
<nav>
<input id="filter" type="search" placeholder="filter by name or class" size="28">
<button id="previous" type="button">previous</button>
<span id="page"></span>
<button id="next" type="button">next</button>
</nav>
<ul id="items"></ul>
<noscript>This index needs JavaScript; each image's pictures are in its own folder.</noscript>
<script>
"use strict";
const ENTRIES = __ENTRIES__;
const PAGE = __PAGE__;
const list = document.getElementById("items"), filter = document.getElementById("filter");
let shown = ENTRIES, page = 0;

function item(entry) {
  const li = document.createElement("li"), a = document.createElement("a");
  const img = document.createElement("img");
  a.href = entry.viewer;
  img.src = entry.thumbnail; img.loading = "lazy"; img.alt = "";
  const small = document.createElement("small");
  small.textContent = entry.target;
  a.append(img, document.createElement("br"), entry.name);
  li.append(a, document.createElement("br"), small);
  return li;
}

function render() {
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  page = Math.min(Math.max(page, 0), pages - 1);
  list.replaceChildren(...shown.slice(page * PAGE, (page + 1) * PAGE).map(item));
  document.getElementById("page").textContent =
    `page ${page + 1} of ${pages} (${shown.length} of ${ENTRIES.length} images)`;
  document.getElementById("previous").disabled = page === 0;
  document.getElementById("next").disabled = page === pages - 1;
  document.body.dataset.page = String(page + 1);
}

filter.addEventListener("input", () => {
  const q = filter.value.trim().toLowerCase();
  const match = e => e.name.toLowerCase().includes(q) || e.target.toLowerCase().includes(q);
  shown = q ? ENTRIES.filter(match) : ENTRIES;
  page = 0; render();
});
document.getElementById("previous").addEventListener("click", () => { page -= 1; render(); });
document.getElementById("next").addEventListener("click", () => { page += 1; render(); });
render();
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""


def index_html(entries: list[dict], title: str = "vitflow run", page_size: int = INDEX_PAGE) -> str:
    """An index page linking per-image viewers, ``page_size`` at a time: ``entries`` of
    ``{"name", "viewer", "thumbnail", "target"}`` with paths relative to the index file."""
    keep = [{k: str(e.get(k, "")) for k in ("name", "viewer", "thumbnail", "target")} for e in entries]
    page = _INDEX.replace("__TITLE__", html.escape(title)).replace("__PAGE__", str(int(page_size)))
    return page.replace("__ENTRIES__", json.dumps(keep).replace("</", "<\\/"))
