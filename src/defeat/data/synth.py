"""Deterministic synthetic detection benchmark ("synth"), written as JPEG images plus COCO JSON.

The task is built to separate a big detector from a small one on a CPU budget and to exercise what
DeFeat and the error analysis care about:

* 9 classes in 3 supercategories. Inside a supercategory the classes share the outer shape and differ
  in a fine detail, so most class confusions are similar-class errors:

  - ``polygon``: ``triangle`` | ``notched_triangle`` (V-notch cut into the base) |
    ``truncated_triangle`` (apex cut off: a trapezoid);
  - ``ring``: ``ring`` (plain annulus) | ``dotted_ring`` (filled dot in the hole) |
    ``broken_ring`` (a 50 degree gap, like a Landolt C);
  - ``tile``: ``tile_1stripe`` | ``tile_2stripes`` | ``tile_3stripes`` (a square tile carrying
    1, 2 or 3 stripes of a contrasting colour).

* Colour is not a class cue: every instance (and every distractor) gets a random colour with enough
  luminance contrast to its surroundings, so only shape tells the classes apart.
* Cluttered, textured backgrounds (smooth noise + gratings + grain) carrying 5-14 non-object
  distractors per image: discs, blobs, plain rectangles and squares, hexagons, rhombi, arcs,
  crescents and polylines, half in object-like colours and half in background-like colours. Thin
  "twigs" are sometimes drawn on top of everything. These make background false positives happen.
* Object sizes span COCO's buckets by the annotation ``area`` (small < 32^2, medium < 96^2,
  large >= 96^2), mild rotation / aspect jitter, per-instance shading.
* Occlusion and touching objects: about 40% of objects are placed against an already placed one
  (touching or overlapping); later objects are drawn over earlier ones.

Annotation conventions (documented, pick-once):

* ``bbox`` is the tight box ``[x, y, w, h]`` (floats, pixels) around the *visible* part of the
  object (alpha >= 0.5 after occlusion and image-border truncation), as in COCO where boxes enclose
  the visible segmentation.
* ``area`` is the visible mask area in pixels (COCO's convention: segmentation area, not box area;
  COCO evaluation buckets small/medium/large by this field).
* Objects with more than ``MAX_OCCLUSION`` (70%) of their area hidden are not annotated (placement
  keeps this rare). ``occlusion`` (an extra field) is the hidden fraction in [0, 0.7].
* ``segmentation`` is ``[]``; ``iscrowd`` is 0; category ids start at 1; ``file_name`` is relative to
  the split folder (``out_dir/train`` or ``out_dir/val``).

Every image is generated from its own RNG seeded by ``(seed, split, index)``, so the output is
byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from defeat.utils import atomic_write_bytes, atomic_write_json, read_json

SYNTH_VERSION = "1.0"
SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-filtered down: anti-aliased edges
JPEG_QUALITY = 90
MAX_OCCLUSION = 0.7  # objects hidden more than this are not annotated
PLACE_MIN_VISIBLE = 0.5  # placement never leaves an earlier object less visible than this
SPLIT_CODES = {"train": 0, "val": 1}
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
# Target visible-area buckets for sampled objects: (probability, min area, max area) in pixels at 320 px.
AREA_BUCKETS = ((0.3, 150.0, 1024.0), (0.4, 1024.0, 9216.0), (0.3, 9216.0, 15000.0))

# An op is (layer, points, width): layer "body" fills the object, "hole" cuts through it, "mark" paints
# the contrasting colour inside it, "line" strokes the body; points are in unit object coordinates
# (the object spans about [-0.5, 0.5]^2); width is for "line", in the same units.
Op = tuple[str, np.ndarray, float]


# ----------------------------------------------------------------------------------------------
# Unit geometry
# ----------------------------------------------------------------------------------------------


def _circle(r: float, cx: float = 0.0, cy: float = 0.0, n: int = 64) -> np.ndarray:
    """Polygon approximating a circle of radius r around (cx, cy)."""
    a = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _arc_band(r0: float, r1: float, a0: float, a1: float, n: int = 48) -> np.ndarray:
    """Polygon of the annulus sector between radii r0 < r1 and angles a0 < a1 (radians)."""
    a = np.linspace(a0, a1, n)
    outer = np.stack([r1 * np.cos(a), r1 * np.sin(a)], axis=1)
    inner = np.stack([r0 * np.cos(a[::-1]), r0 * np.sin(a[::-1])], axis=1)
    return np.concatenate([outer, inner])


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.array(pts, dtype=float)


# ----------------------------------------------------------------------------------------------
# Classes: one drawing function per class (outer shape shared inside a supercategory)
# ----------------------------------------------------------------------------------------------

_TRIANGLE = _poly((-0.5, 0.45), (0.5, 0.45), (0.0, -0.45))


def _triangle(rng: np.random.Generator) -> list[Op]:
    return [("body", _TRIANGLE, 0.0)]


def _notched_triangle(rng: np.random.Generator) -> list[Op]:
    notch = _poly((-0.17, 0.47), (0.17, 0.47), (0.0, 0.08))
    return [("body", _TRIANGLE, 0.0), ("hole", notch, 0.0)]


def _truncated_triangle(rng: np.random.Generator) -> list[Op]:
    top = -0.15  # cut the apex off at a third of the height
    half = 0.5 * (top + 0.45) / 0.9
    return [("body", _poly((-0.5, 0.45), (0.5, 0.45), (half, top), (-half, top)), 0.0)]


def _ring(rng: np.random.Generator) -> list[Op]:
    return [("body", _circle(0.5), 0.0), ("hole", _circle(0.3), 0.0)]


def _dotted_ring(rng: np.random.Generator) -> list[Op]:
    return _ring(rng) + [("body", _circle(0.14, n=32), 0.0)]


def _broken_ring(rng: np.random.Generator) -> list[Op]:
    gap = math.radians(25.0)
    return _ring(rng) + [("hole", _arc_band(0.0, 0.6, -gap, gap, n=8), 0.0)]


def _tile(stripes: int) -> Callable[[np.random.Generator], list[Op]]:
    def draw(rng: np.random.Generator) -> list[Op]:
        ops: list[Op] = [("body", _rect(-0.5, -0.5, 0.5, 0.5), 0.0)]
        for i in range(stripes):
            cy = -0.5 + (i + 1) / (stripes + 1)
            ops.append(("mark", _rect(-0.37, cy - 0.055, 0.37, cy + 0.055), 0.0))
        return ops

    draw.__doc__ = f"Square tile with {stripes} contrasting stripe(s)."
    return draw


@dataclass(frozen=True)
class ShapeClass:
    name: str
    supercategory: str
    draw: Callable[[np.random.Generator], list[Op]]
    rotation: str  # "upright" (+-30 deg), "axis" (0/90 deg +-20) or "any"


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("triangle", "polygon", _triangle, "upright"),
    ShapeClass("notched_triangle", "polygon", _notched_triangle, "upright"),
    ShapeClass("truncated_triangle", "polygon", _truncated_triangle, "upright"),
    ShapeClass("ring", "ring", _ring, "any"),
    ShapeClass("dotted_ring", "ring", _dotted_ring, "any"),
    ShapeClass("broken_ring", "ring", _broken_ring, "any"),
    ShapeClass("tile_1stripe", "tile", _tile(1), "axis"),
    ShapeClass("tile_2stripes", "tile", _tile(2), "axis"),
    ShapeClass("tile_3stripes", "tile", _tile(3), "axis"),
)

SYNTH_CATEGORIES: list[dict] = [
    {"id": i + 1, "name": c.name, "supercategory": c.supercategory} for i, c in enumerate(SHAPE_CLASSES)
]


# ----------------------------------------------------------------------------------------------
# Distractors: shapes that are not any class (partial shapes, blobs, lines, plain look-alikes)
# ----------------------------------------------------------------------------------------------


def _d_disc(rng: np.random.Generator) -> list[Op]:
    return [("body", _circle(0.5), 0.0)]


def _d_blob(rng: np.random.Generator) -> list[Op]:
    a = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
    r = 0.38 * np.ones_like(a)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.1) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
    return [("body", np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 0.0)]


def _d_rect(rng: np.random.Generator) -> list[Op]:
    h = 0.5 if rng.random() < 0.3 else rng.uniform(0.12, 0.3)  # plain square: a stripe-less "tile"
    return [("body", _rect(-0.5, -h, 0.5, h), 0.0)]


def _d_regular(rng: np.random.Generator) -> list[Op]:
    n = int(rng.integers(5, 7))
    return [("body", _circle(0.5, n=n), 0.0)]


def _d_rhombus(rng: np.random.Generator) -> list[Op]:
    w = rng.uniform(0.2, 0.35)
    return [("body", _poly((0.0, -0.5), (w, 0.0), (0.0, 0.5), (-w, 0.0)), 0.0)]


def _d_arc(rng: np.random.Generator) -> list[Op]:
    span = math.radians(rng.uniform(90.0, 220.0))
    return [("body", _arc_band(0.3, 0.5, 0.0, span), 0.0)]


def _d_crescent(rng: np.random.Generator) -> list[Op]:
    return [("body", _circle(0.5), 0.0), ("hole", _circle(0.45, cx=rng.uniform(0.2, 0.35)), 0.0)]


def _d_polyline(rng: np.random.Generator) -> list[Op]:
    pts = rng.uniform(-0.5, 0.5, size=(int(rng.integers(2, 5)), 2))
    return [("line", pts, rng.uniform(0.03, 0.08))]


DISTRACTORS = (_d_disc, _d_blob, _d_rect, _d_regular, _d_rhombus, _d_arc, _d_crescent, _d_polyline, _d_polyline)


# ----------------------------------------------------------------------------------------------
# Rasterising and compositing
# ----------------------------------------------------------------------------------------------


@dataclass
class Layer:
    """A rasterised shape: body/mark alpha patches whose top-left pixel is (ox, oy) in the image."""

    body: np.ndarray  # float32 (h, w) in [0, 1], unclipped
    mark: np.ndarray
    ox: int
    oy: int

    def clip(self, size: int) -> tuple[slice, slice, slice, slice]:
        """(image rows, image cols, patch rows, patch cols) of the part inside a size x size image."""
        h, w = self.body.shape
        y0, x0 = max(self.oy, 0), max(self.ox, 0)
        y1, x1 = min(self.oy + h, size), min(self.ox + w, size)
        y1, x1 = max(y1, y0), max(x1, x0)
        return (slice(y0, y1), slice(x0, x1), slice(y0 - self.oy, y1 - self.oy), slice(x0 - self.ox, x1 - self.ox))


def _transform(pts: np.ndarray, sx: float, sy: float, theta: float, cx: float, cy: float) -> np.ndarray:
    """Scale unit points by (sx, sy), rotate by theta (radians) and move to (cx, cy)."""
    c, s = math.cos(theta), math.sin(theta)
    p = pts * np.array([sx, sy])
    return np.stack([c * p[:, 0] - s * p[:, 1] + cx, s * p[:, 0] + c * p[:, 1] + cy], axis=1)


def rasterize(ops: list[Op], sx: float, sy: float, theta: float, cx: float, cy: float) -> Layer:
    """Draw ops at SUPERSAMPLE x resolution with PIL, box-filter down to anti-aliased alpha patches."""
    placed = [(layer, _transform(pts, sx, sy, theta, cx, cy), width * max(sx, sy)) for layer, pts, width in ops]
    allp = np.concatenate([p for _, p, _ in placed])
    pad = 2 + int(max(w for _, _, w in placed))
    ox, oy = int(math.floor(allp[:, 0].min())) - pad, int(math.floor(allp[:, 1].min())) - pad
    w = int(math.ceil(allp[:, 0].max())) + pad - ox
    h = int(math.ceil(allp[:, 1].max())) + pad - oy
    ss = SUPERSAMPLE
    body, mark = Image.new("L", (w * ss, h * ss), 0), Image.new("L", (w * ss, h * ss), 0)
    db, dm = ImageDraw.Draw(body), ImageDraw.Draw(mark)
    for layer, p, width in placed:
        q = [tuple(v) for v in ((p - (ox, oy)) * ss).tolist()]
        if layer == "body":
            db.polygon(q, fill=255)
        elif layer == "hole":
            db.polygon(q, fill=0)
            dm.polygon(q, fill=0)
        elif layer == "mark":
            dm.polygon(q, fill=255)
        elif layer == "line":
            db.line(q, fill=255, width=max(1, round(width * ss)), joint="curve")
    b = np.asarray(body.reduce(ss), dtype=np.float32) / 255.0
    m = np.minimum(np.asarray(mark.reduce(ss), dtype=np.float32) / 255.0, b)
    return Layer(b, m, ox, oy)


def composite(canvas: np.ndarray, layer: Layer, rgb: np.ndarray, mark_rgb: np.ndarray, shade: float, phi: float):
    """Alpha-blend a layer onto the canvas in place, with a linear shading gradient across it."""
    ys, xs, py, px = layer.clip(canvas.shape[0])
    a = layer.body[py, px][..., None]
    if a.size == 0:
        return
    m = layer.mark[py, px][..., None]
    h, w = layer.body.shape
    yy, xx = np.mgrid[py, px].astype(np.float32)
    g = 1.0 + shade * ((xx - w / 2) * math.cos(phi) + (yy - h / 2) * math.sin(phi)) / max(h, w)
    colour = (rgb * (1.0 - m) + mark_rgb * m) * g[..., None]
    canvas[ys, xs] = canvas[ys, xs] * (1.0 - a) + np.clip(colour, 0.0, 1.0) * a


# ----------------------------------------------------------------------------------------------
# Colours and background texture
# ----------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _lum(rgb: np.ndarray) -> float:
    return float(rgb[..., 0].mean() * 0.299 + rgb[..., 1].mean() * 0.587 + rgb[..., 2].mean() * 0.114)


def object_colour(rng: np.random.Generator, bg_lum: float, min_contrast: float = 0.25) -> np.ndarray:
    """A random saturated colour whose luminance differs from bg_lum by at least min_contrast."""
    for _ in range(12):
        rgb = _hsv(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.15, 1.0))
        if abs(_lum(rgb) - bg_lum) >= min_contrast:
            return rgb
    return _hsv(rng.random(), rng.uniform(0.45, 1.0), 0.12 if bg_lum > 0.5 else 1.0)


def mark_colour(rgb: np.ndarray) -> np.ndarray:
    """The stripe colour of a tile: its body colour pushed most of the way to black or white."""
    target = 0.0 if _lum(rgb) > 0.45 else 1.0
    return (rgb * 0.3 + target * 0.7).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a cells x cells normal grid upsampled bicubically."""
    low = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    f = np.asarray(low.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (f - f.min()) / max(float(f.max() - f.min()), 1e-6)


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Textured background (size, size, 3) in [0, 1] and its 3-colour palette.

    Two smooth noise fields mix three desaturated colours of nearby hue; 2-3 random gratings and a
    fine grain modulate brightness (fabric / floor-like clutter). Vectorised numpy, a few ms.
    """
    h0 = rng.random()
    palette = np.stack(
        [_hsv(h0 + rng.uniform(-0.12, 0.12), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.8)) for _ in range(3)]
    )
    t1 = _smooth_noise(rng, size, int(rng.integers(3, 9)))[..., None]
    t2 = _smooth_noise(rng, size, int(rng.integers(4, 12)))[..., None]
    t2 = np.clip((t2 - 0.55) * 6.0, 0.0, 1.0)  # patchy regions of the third colour
    img = palette[0] * (1 - t1) + palette[1] * t1
    img = img * (1 - t2) + palette[2] * t2
    axis = np.arange(size, dtype=np.float32)
    mod = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 4))):  # sin(a x + b y + c), separably: no full-size sin
        period, ang = rng.uniform(5.0, 40.0), rng.uniform(0, math.pi)
        fx, fy = (2 * math.pi / period) * math.cos(ang), (2 * math.pi / period) * math.sin(ang)
        px, py = axis * fx + rng.uniform(0, 2 * math.pi), axis * fy
        amp = rng.uniform(0.02, 0.1)
        mod += amp * (np.cos(py)[:, None] * np.sin(px)[None, :] + np.sin(py)[:, None] * np.cos(px)[None, :])
    grain = Image.fromarray(rng.standard_normal((size // 2, size // 2), dtype=np.float32), mode="F")
    mod += 0.04 * np.asarray(grain.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return np.clip(img * (1.0 + mod)[..., None], 0.0, 1.0).astype(np.float32), palette


# ----------------------------------------------------------------------------------------------
# Scene layout
# ----------------------------------------------------------------------------------------------


@dataclass
class PlacedObject:
    cls: int  # index into SHAPE_CLASSES
    layer: Layer
    vis: np.ndarray  # visible alpha over the layer's in-image patch (updated as later layers occlude)
    y0: int  # image row / column of vis[0, 0]
    x0: int
    full: float  # total alpha of the unclipped shape
    cx: float
    cy: float
    radius: float


def _rotation(rng: np.random.Generator, mode: str) -> float:
    if mode == "upright":
        return math.radians(rng.uniform(-30.0, 30.0))
    if mode == "axis":
        return math.radians(90.0 * int(rng.integers(0, 2)) + rng.uniform(-20.0, 20.0))
    return rng.uniform(0.0, 2.0 * math.pi)


@functools.cache
def _unit_area(cls: int) -> float:
    """Filled area of a class shape at unit size (deterministic draw)."""
    layer = rasterize(SHAPE_CLASSES[cls].draw(np.random.default_rng(0)), 100.0, 100.0, 0.0, 0.0, 0.0)
    return float(layer.body.sum()) / 100.0**2


def _sample_extent(rng: np.random.Generator, cls: int, image_size: int, small: bool) -> tuple[float, float]:
    """Object scale (sx, sy) in pixels: area drawn log-uniformly inside a COCO-like size bucket."""
    probs = np.array([b[0] for b in AREA_BUCKETS])
    k = 0 if small else int(rng.choice(len(AREA_BUCKETS), p=probs / probs.sum()))
    lo, hi = AREA_BUCKETS[k][1:]
    area = math.exp(rng.uniform(math.log(lo), math.log(hi))) * (image_size / 320.0) ** 2
    aspect = math.exp(rng.uniform(-0.12, 0.12))
    s = math.sqrt(area / _unit_area(cls))
    return s * aspect, s / aspect


def _intersect(o: PlacedObject, layer: Layer) -> tuple[np.ndarray, np.ndarray] | None:
    """Views of o's visible alpha and of layer's alpha over their common pixels (None if disjoint)."""
    vh, vw = o.vis.shape
    y0, y1 = max(o.y0, layer.oy), min(o.y0 + vh, layer.oy + layer.body.shape[0])
    x0, x1 = max(o.x0, layer.ox), min(o.x0 + vw, layer.ox + layer.body.shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    vis = o.vis[y0 - o.y0 : y1 - o.y0, x0 - o.x0 : x1 - o.x0]
    return vis, layer.body[y0 - layer.oy : y1 - layer.oy, x0 - layer.ox : x1 - layer.ox]


def _overlap(o: PlacedObject, layer: Layer) -> float:
    """Visible alpha of o that layer would cover."""
    views = _intersect(o, layer)
    return 0.0 if views is None else float((views[0] * views[1]).sum())


def occlude(objects: list[PlacedObject], layer: Layer) -> None:
    """Reduce the visible alpha of already placed objects under a new layer drawn on top."""
    for o in objects:
        views = _intersect(o, layer)
        if views is not None:
            vis, cov = views
            vis *= 1.0 - cov


def _try_place(rng, cls: int, objects: list[PlacedObject], size: int, near: bool, small: bool):
    """One placement attempt: a Layer and its centre, or None when it breaks the occlusion rules."""
    sx, sy = _sample_extent(rng, cls, size, small)
    radius = 0.5 * max(sx, sy)
    if near and objects:
        anchor = objects[int(rng.integers(len(objects)))]
        ang, dist = rng.uniform(0, 2 * math.pi), (anchor.radius + radius) * rng.uniform(0.6, 1.0)
        cx, cy = anchor.cx + dist * math.cos(ang), anchor.cy + dist * math.sin(ang)
    else:
        cx, cy = rng.uniform(0.1 * radius, size - 0.1 * radius, size=2)
    layer = rasterize(SHAPE_CLASSES[cls].draw(rng), sx, sy, _rotation(rng, SHAPE_CLASSES[cls].rotation), cx, cy)
    full = float(layer.body.sum())
    ys, xs, py, px = layer.clip(size)
    if float(layer.body[py, px].sum()) < 0.8 * full:  # at most 20% outside the image
        return None
    for o in objects:
        covered = _overlap(o, layer)
        if not near and covered > 0.0:
            return None
        if float(o.vis.sum()) - covered < PLACE_MIN_VISIBLE * o.full:
            return None
    return PlacedObject(cls, layer, layer.body[py, px].copy(), ys.start, xs.start, full, cx, cy, radius)


def layout_objects(rng: np.random.Generator, canvas: np.ndarray, n: int) -> list[PlacedObject]:
    """Place and draw n objects: 40% touch/overlap an earlier one, the rest lie free; colours contrast."""
    size = canvas.shape[0]
    objects: list[PlacedObject] = []
    for _ in range(n):
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        near = bool(rng.random() < 0.4)
        placed = None
        for attempt in range(30):
            placed = _try_place(rng, cls, objects, size, near=near or attempt >= 12, small=attempt >= 20)
            if placed is not None:
                break
        if placed is None:
            continue
        ys, xs, _, _ = placed.layer.clip(size)
        rgb = object_colour(rng, _lum(canvas[ys, xs]))
        composite(canvas, placed.layer, rgb, mark_colour(rgb), rng.uniform(-0.35, 0.35), rng.uniform(0, 2 * math.pi))
        occlude(objects, placed.layer)
        objects.append(placed)
    return objects


def draw_distractors(rng, canvas: np.ndarray, palette: np.ndarray, count: int, objects: list[PlacedObject]):
    """Draw non-object clutter; half object-like colours, half background-like. Occludes `objects`."""
    size = canvas.shape[0]
    for _ in range(count):
        draw = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        s = math.exp(rng.uniform(math.log(8.0), math.log(90.0))) * size / 320.0
        aspect = math.exp(rng.uniform(-0.3, 0.3))
        cx, cy = rng.uniform(0, size, size=2)
        layer = rasterize(draw(rng), s * aspect, s / aspect, rng.uniform(0, 2 * math.pi), cx, cy)
        ys, xs, _, _ = layer.clip(size)
        if rng.random() < 0.5:
            rgb = object_colour(rng, _lum(canvas[ys, xs]) if canvas[ys, xs].size else 0.5)
        else:
            rgb = np.clip(palette[int(rng.integers(3))] * rng.uniform(0.7, 1.3), 0, 1).astype(np.float32)
        composite(canvas, layer, rgb, rgb, rng.uniform(-0.3, 0.3), rng.uniform(0, 2 * math.pi))
        occlude(objects, layer)


def draw_twigs(rng, canvas: np.ndarray, objects: list[PlacedObject]) -> None:
    """0-2 thin dark or light polylines over everything (occluders that are not objects)."""
    size = canvas.shape[0]
    for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15]))):
        pts = rng.uniform(0, size, size=(int(rng.integers(2, 4)), 2))
        layer = rasterize([("line", pts, rng.uniform(1.2, 2.5))], 1.0, 1.0, 0.0, 0.0, 0.0)
        rgb = _hsv(rng.random(), rng.uniform(0, 0.5), rng.choice([0.1, 0.95]))
        composite(canvas, layer, rgb, rgb, 0.0, 0.0)
        occlude(objects, layer)


# ----------------------------------------------------------------------------------------------
# Annotations and one image
# ----------------------------------------------------------------------------------------------


def annotate(objects: list[PlacedObject], size: int) -> list[dict]:
    """COCO annotations (no ids yet) for visible objects: tight visible box, visible area, occlusion."""
    anns = []
    for o in objects:
        visible = float(o.vis.sum())
        occlusion = 1.0 - visible / max(o.full, 1e-6)
        mask = o.vis >= 0.5
        if occlusion > MAX_OCCLUSION or not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0 = o.x0 + int(cols[0]), o.y0 + int(rows[0])
        w, h = int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1
        if w < 3 or h < 3:
            continue
        anns.append(
            {
                "category_id": o.cls + 1,
                "bbox": [float(x0), float(y0), float(w), float(h)],
                "area": round(visible, 1),
                "iscrowd": 0,
                "segmentation": [],
                "occlusion": round(max(occlusion, 0.0), 3),
            }
        )
    return anns


def render_image(
    seed: int, split: str, index: int, image_size: int = 320, min_objects: int = 2, max_objects: int = 8
) -> tuple[np.ndarray, list[dict]]:
    """Generate one image (uint8 HxWx3) and its annotations from the RNG of (seed, split, index)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    canvas, palette = background(rng, image_size)
    draw_distractors(rng, canvas, palette, int(rng.integers(5, 15)), [])
    objects = layout_objects(rng, canvas, int(rng.integers(min_objects, max_objects + 1)))
    draw_twigs(rng, canvas, objects)
    canvas *= rng.uniform(0.85, 1.15)  # global exposure
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(0.012)
    pixels = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return pixels, annotate(objects, image_size)


def _make_image(task: tuple) -> tuple[dict, list[dict]]:
    """Worker: render, write the JPEG, return the COCO image record and its annotations."""
    split_dir, seed, split, index, image_size, min_objects, max_objects = task
    pixels, anns = render_image(seed, split, index, image_size, min_objects, max_objects)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    file_name = f"{index:06d}.jpg"
    atomic_write_bytes(
        Path(split_dir) / file_name, buffer.getvalue(), fsync=False
    )  # the JSON, written last, is durable
    record = {"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size}
    for ann in anns:
        ann["image_id"] = index + 1
    return record, anns


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------


def _split_stats(anns: list[dict]) -> tuple[dict, dict]:
    """Box counts per class name and per COCO size bucket (by annotation area)."""
    per_class = {c["name"]: 0 for c in SYNTH_CATEGORIES}
    per_size = {name: 0 for name, _, _ in SIZE_BUCKETS}
    for a in anns:
        per_class[SYNTH_CATEGORIES[a["category_id"] - 1]["name"]] += 1
        per_size[next(n for n, lo, hi in SIZE_BUCKETS if lo <= a["area"] < hi)] += 1
    return per_class, per_size


def _run_tasks(tasks: list[tuple], progress: bool, desc: str, pool) -> list[tuple[dict, list]]:
    """Run image tasks in order, in the pool or in this process, with an optional tqdm bar."""
    from tqdm import tqdm

    results = pool.imap(_make_image, tasks, chunksize=4) if pool is not None else map(_make_image, tasks)
    return list(tqdm(results, total=len(tasks), desc=desc, disable=not progress, unit="img"))


def _make_pool(workers: int):
    """Worker pool; "fork" where available: it works from any caller (REPL, stdin, scripts without a
    main guard) and workers only use numpy/PIL, never torch, so forking a torch-importing parent is safe."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn").Pool(workers)


def generate_synthetic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 320,
    min_objects: int = 2,
    max_objects: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Writes out_dir/train/*.jpg, out_dir/train.json, out_dir/val/*.jpg, out_dir/val.json. Returns a summary dict
    (paths, counts of images/boxes per split, per-class and per-size-bucket box counts, seconds).

    Output is byte-identical for a given seed and arguments whatever ``workers`` is (each image has its
    own RNG seeded by (seed, split, index)). A split's old JSON is removed before its images are
    rewritten and the new JSON is written last, atomically: an interrupted run never leaves a JSON that
    refers to missing or half-written images.
    """
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    start = time.perf_counter()
    out = Path(out_dir)
    summary: dict = {
        "out_dir": str(out),
        "seed": seed,
        "image_size": image_size,
        "version": SYNTH_VERSION,
        "categories": SYNTH_CATEGORIES,
        "splits": {},
    }
    pool = _make_pool(workers) if workers > 1 and num_train + num_val > 8 else None
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            split_dir, json_path = out / split, out / f"{split}.json"
            split_dir.mkdir(parents=True, exist_ok=True)
            json_path.unlink(missing_ok=True)
            tasks = [(str(split_dir), seed, split, i, image_size, min_objects, max_objects) for i in range(count)]
            results = _run_tasks(tasks, progress, f"synth {split}", pool)
            images, anns = [r for r, _ in results], [a for _, al in results for a in al]
            for k, a in enumerate(anns):
                a["id"] = k + 1
            info = {
                "description": "defeat synthetic detection benchmark",
                "version": SYNTH_VERSION,
                "seed": seed,
                "split": split,
                "min_objects": min_objects,
                "max_objects": max_objects,
            }
            coco = {"info": info, "images": images, "annotations": anns, "categories": SYNTH_CATEGORIES}
            atomic_write_json(json_path, coco, indent=None)
            per_class, per_size = _split_stats(anns)
            summary["splits"][split] = {
                "images_dir": str(split_dir),
                "annotations": str(json_path),
                "num_images": len(images),
                "num_boxes": len(anns),
                "per_class": per_class,
                "per_size": per_size,
            }
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


# ----------------------------------------------------------------------------------------------
# README figure
# ----------------------------------------------------------------------------------------------

_SUPER_COLOURS = {"polygon": (255, 60, 60), "ring": (40, 220, 255), "tile": (255, 230, 40)}


def render_examples(
    dataset_dir: str | Path, out_png: str | Path, n: int = 6, split: str = "val", cols: int = 3
) -> Path:
    """Grid of the first n images of a split with their boxes and class names (the README figure)."""
    root = Path(dataset_dir)
    coco = read_json(root / f"{split}.json")
    names = {c["id"]: (c["name"], c["supercategory"]) for c in coco["categories"]}
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    tiles = []
    for img in coco["images"][:n]:
        im = Image.open(root / split / img["file_name"]).convert("RGB")
        draw = ImageDraw.Draw(im)
        for a in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
            x, y, w, h = a["bbox"]
            name, sup = names[a["category_id"]]
            colour = _SUPER_COLOURS.get(sup, (255, 255, 255))
            draw.rectangle([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], outline=colour, width=1)
            tx, ty = x, max(y - 11, 0)
            tw = draw.textlength(name, font=font)
            draw.rectangle([tx, ty, tx + tw + 2, ty + 10], fill=(0, 0, 0))
            draw.text((tx + 1, ty - 1), name, fill=colour, font=font)
        tiles.append(im)
    if not tiles:
        raise ValueError(f"{root / f'{split}.json'}: no images")
    w, h = tiles[0].size
    rows = math.ceil(len(tiles) / cols)
    gap = 4
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), (255, 255, 255))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % cols) * (w + gap), (k // cols) * (h + gap)))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=192, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return out
