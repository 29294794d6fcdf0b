"""The toy world: procedurally drawn outdoor scenes whose every pixel is labeled.

A scene is a pure function of ``(seed, size)``. All geometry (layout, which objects, where,
their colors and patterns) is drawn from ``np.random.default_rng(seed)`` in normalized
coordinates, so the same seed gives the same scene at 64, 112 or 224 pixels; only the
per-pixel noise comes from a second generator seeded with ``(seed, size)``.

Rendering
---------
The scene is painted at twice the output size, back to front (painter's order), into an
RGB canvas and four label canvases (object, part, material, texture). The image is the
mean of each 2x2 block plus a little Gaussian pixel noise (std 2 levels). Labels are taken
from one sub-pixel per output pixel: the first sub-pixel whose *object* label is the most
frequent object label of its block, and the part, material and texture labels come from
that same sub-pixel, so the layers always agree with each other (a door pixel is always a
house pixel) and each label is what the pixel mostly shows. The color layer is
``name_colors`` of the final image (:mod:`dissect.segmenters.color`).

Painter's order: sky (stars at night), sun (day only), clouds, mountains, ground bands
(grass / sand / road / water), then trees, houses, cars and fences sorted far to near
(by the y of their base; nearer objects are drawn larger).

Surfaces are never flat: every surface has a light gradient, and these patterns:
brick (house walls, material ``brick``), wood grain (trunks, fences and doors, material
``wood``), glass (windows, material ``glass``); the pixel textures ``striped`` (some car
bodies, roofs, house walls with siding), ``dotted`` (some car bodies, fruit-tree crowns),
``checkered`` (some car bodies and tiled roofs). A texture label covers the whole patterned
surface (both colors of the pattern).

Scene classes (whole-image labels)
----------------------------------
Chosen uniformly; the class decides the composition (counts drawn uniformly from the
ranges, "p" = probability of presence):

==========  ===============================  ==========================================
class       ground (from horizon down)       objects
==========  ===============================  ==========================================
forest      grass                            6-11 trees; mountains p=.3; fence p=.1
village     grass                            2-4 houses; 1-3 trees; fence p=.25;
                                             1 car p=.1; mountains p=.2
street      thin grass strip, then road      2-4 houses (on the strip); 1-3 cars (road);
                                             0-1 tree
beach       sea (water), then sand           sun p=.85 (day); 0-1 tree; mountains p=.15
lake        water, then grass shore          1-3 mountains; 0-2 trees; 1 house p=.2
field       grass                            1-2 fences; 0-2 trees; 1 house p=.25;
                                             mountains p=.3
==========  ===============================  ==========================================

Every class also gets 0-3 clouds, and the sun with p=.5 (beach: .85) in daytime.
Night is a modifier, not a class: with p=.25 any scene is drawn at night (dark sky
with stars, no sun, dark clouds, every non-sky surface darkened and tinted blue except
lit windows). Horizon height is uniform in [0.35, 0.55] of the image height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from dissect.segmenters.color import COLOR_NAMES, name_colors

GENERATOR_VERSION = 1

SCENE_CLASSES = ["forest", "village", "street", "beach", "lake", "field"]
CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
PIXEL_CATEGORIES = ["color", "object", "part", "material", "texture"]

_CONCEPTS: dict[str, list[str]] = {
    "color": [f"{c}-c" for c in COLOR_NAMES],
    "object": ["sky", "grass", "sand", "road", "water", "mountain", "tree", "house", "car",
               "sun", "cloud", "fence"],
    "part": ["trunk", "crown", "wall", "roof", "door", "window", "body", "wheel"],
    "material": ["brick", "wood", "glass"],
    "scene": [f"{s}-s" for s in SCENE_CLASSES],
    "texture": ["striped", "dotted", "checkered"],
}

#: (global number, Broden name, category) of every label; numbers start at 1 (0 = "-").
LABELS: list[tuple[int, str, str]] = [
    (i + 1, name, cat)
    for i, (name, cat) in enumerate(
        (name, cat) for cat in CATEGORIES for name in _CONCEPTS[cat]
    )
]
LABEL_NUMBER: dict[str, int] = {name: num for num, name, _ in LABELS}
LABEL_NAME: dict[int, str] = {num: name for num, name, _ in LABELS}
LABEL_CATEGORY: dict[int, str] = {num: cat for num, _, cat in LABELS}
#: Global label number of each COLOR_NAMES index.
COLOR_LABEL_NUMBERS = np.array([LABEL_NUMBER[f"{c}-c"] for c in COLOR_NAMES], dtype=np.int32)
#: The object each part belongs to.
PART_PARENT = {"trunk": "tree", "crown": "tree", "wall": "house", "roof": "house",
               "door": "house", "window": "house", "body": "car", "wheel": "car"}

_L = LABEL_NUMBER


@dataclass
class Scene:
    """One rendered scene.

    ``layers`` maps each pixel category to an int32 HxW map of global label numbers
    (0 = none). ``horizon`` is the horizon's height as a fraction of the image height
    (a whole number of pixels); ``objects`` names the object kinds placed in the scene,
    ground included (some may end up hidden behind others).
    """

    image: np.ndarray
    layers: dict[str, np.ndarray]
    scene_class: int
    night: bool
    horizon: float = 0.0
    seed: int = 0
    size: int = 0
    objects: list[str] = field(default_factory=list)

    @property
    def scene_name(self) -> str:
        return SCENE_CLASSES[self.scene_class]


# --------------------------------------------------------------------------- canvas


class _Canvas:
    """A 2x canvas: float RGB plus object/part/material/texture label maps."""

    def __init__(self, n: int):
        self.n = n
        self.rgb = np.zeros((n, n, 3), np.float32)
        # labels packed in one uint32: object | part << 8 | material << 16 | texture << 24
        self.key = np.zeros((n, n), np.uint32)
        self.lit = None  # bool map of lit windows (night only), created on first use
        self.coords = (np.arange(n, dtype=np.float32) + 0.5) / n

    def box(self, x0: float, y0: float, x1: float, y1: float):
        """Pixel box covering the normalized box, clipped; None when empty.

        Returns (r0, r1, c0, c1, yy, xx) with yy (h,1) and xx (1,w) normalized centers.
        """
        n = self.n
        r0 = max(0, int(math.floor(y0 * n)))
        r1 = min(n, int(math.ceil(y1 * n)))
        c0 = max(0, int(math.floor(x0 * n)))
        c1 = min(n, int(math.ceil(x1 * n)))
        if r1 <= r0 or c1 <= c0:
            return None
        return r0, r1, c0, c1, self.coords[r0:r1, None], self.coords[None, c0:c1]

    def paint(self, box, mask, color, obj=0, part=0, mat=0, tex=0):
        """Paint ``color`` ((h,w,3) array or an RGB triple) where ``mask`` inside ``box``."""
        r0, r1, c0, c1 = box[:4]
        color = np.asarray(color, np.float32)
        region = self.rgb[r0:r1, c0:c1]
        key = np.uint32(obj | part << 8 | mat << 16 | tex << 24)
        if mask is None:
            region[...] = color
            self.key[r0:r1, c0:c1] = key
        else:
            np.copyto(region, color, where=mask[..., None])
            np.copyto(self.key[r0:r1, c0:c1], key, where=mask)
        if self.lit is not None:  # whatever is painted now covers lit windows
            self.lit[r0:r1, c0:c1] &= False if mask is None else ~mask


def _shade(base, yy, xx, gy=0.0, gx=0.0, y0=0.0, x0=0.0):
    """Base color with a linear light gradient: (h,w,3)."""
    f = 1.0 + gy * (yy - y0) + gx * (xx - x0)
    return np.asarray(base, np.float32) * f[..., None]


def _jitter(rng, rgb, amount=18.0):
    """A color near ``rgb`` (each channel moved by up to +-amount)."""
    d = rng.uniform(-amount, amount, 3).tolist()
    return tuple(min(255.0, max(0.0, c + e)) for c, e in zip(rgb, d))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _mix(a, b, t):
    """Blend two colors/images by t ((h,w) in [0,1] or bool)."""
    t = np.asarray(t, np.float32)[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


# --------------------------------------------------------------------------- patterns


def _stripes(yy, xx, period, angle):
    u = xx * math.cos(angle) + yy * math.sin(angle)
    return np.mod(u / period, 1.0) < 0.5


def _dots(yy, xx, period, radius):
    dy = np.mod(yy, period) - period / 2
    dx = np.mod(xx + (np.floor(yy / period) % 2) * period / 2, period) - period / 2
    return dy * dy + dx * dx < radius * radius


def _checks(yy, xx, period):
    return (np.floor(yy / period) + np.floor(xx / period)) % 2 == 0


def _wood(rng, yy, xx, base, vertical=True, plank=None):
    """Wood grain: wavy streaks along the grain, dark seams between planks."""
    along, across = (yy, xx) if vertical else (xx, yy)
    lam = rng.uniform(0.012, 0.02)
    ph = rng.uniform(0, 2 * math.pi)
    grain = np.sin((across + 0.006 * np.sin(along * 60 + ph)) / lam * 2 * math.pi)
    f = 0.88 + 0.12 * grain
    if plank:
        f = np.where(np.mod(across, plank) < plank * 0.12, 0.6, f)
    return np.asarray(base, np.float32) * f[..., None]


def _pattern_surface(rng, yy, xx, base, kind):
    """A surface color with an optional texture ('' = plain). Returns (rgb, tex label)."""
    plain = _shade(base, yy, xx, gy=-0.6, gx=0.3, y0=float(yy.mean()), x0=float(xx.mean()))
    if not kind:
        return plain, 0
    other = _jitter(rng, _pick(rng, _ACCENTS), 10)
    period = rng.uniform(0.05, 0.08)
    if kind == "striped":
        m = _stripes(yy, xx, period, _pick(rng, [0.0, math.pi / 2, math.pi / 4]))
    elif kind == "dotted":
        m = _dots(yy, xx, period, period * 0.28)
    else:
        m = _checks(yy, xx, period * 0.6)
    return _mix(plain, _shade(other, yy, xx, gy=-0.6, y0=float(yy.mean())), m), _L[kind]


_ACCENTS = [(240, 240, 235), (30, 30, 35), (230, 200, 40), (200, 40, 40), (40, 70, 180),
            (240, 140, 30)]

# --------------------------------------------------------------------------- objects


def _draw_sky(cv: _Canvas, rng, hy, night):
    box = cv.box(0, 0, 1, hy)
    if box is None:
        return
    yy, xx = box[4], box[5]
    if night:
        top, bottom = _jitter(rng, (8, 12, 40), 6), _jitter(rng, (35, 35, 80), 8)
    else:
        top, bottom = _jitter(rng, (60, 120, 215), 20), _jitter(rng, (170, 205, 240), 15)
    t = np.clip(yy / max(hy, 1e-3), 0, 1) + 0 * xx
    cv.paint(box, None, _mix(top, bottom, t), _L["sky"])
    if night:  # stars: tiny bright dots, still sky
        for _ in range(int(rng.integers(10, 30))):
            x, y, r = rng.uniform(0, 1), rng.uniform(0, hy * 0.8), rng.uniform(0.004, 0.009)
            b = cv.box(x - r, y - r, x + r, y + r)
            if b is not None:
                m = (b[4] - y) ** 2 + (b[5] - x) ** 2 <= r * r
                cv.paint(b, m, _jitter(rng, (235, 235, 210), 15), _L["sky"])


def _draw_sun(cv, rng, hy):
    r = rng.uniform(0.05, 0.08)
    x, y = rng.uniform(0.1, 0.9), rng.uniform(r + 0.02, max(r + 0.03, hy - r - 0.05))
    b = cv.box(x - r, y - r, x + r, y + r)
    if b is None:
        return
    yy, xx = b[4], b[5]
    d2 = ((yy - y) ** 2 + (xx - x) ** 2) / (r * r)
    core = _jitter(rng, (255, 225, 60), 15)
    rgb = _mix(core, (255, 250, 200), np.clip(1 - d2, 0, 1) * 0.6)
    cv.paint(b, d2 <= 1, rgb, _L["sun"])


def _draw_cloud(cv, rng, hy, night):
    w = rng.uniform(0.12, 0.25)
    x, y = rng.uniform(0.0, 1.0), rng.uniform(0.06, max(0.08, hy - 0.12))
    base = _jitter(rng, (90, 90, 105) if night else (245, 245, 248), 8)
    b = cv.box(x - w, y - w * 0.5, x + w, y + w * 0.3)
    if b is None:
        return
    yy, xx = b[4], b[5]
    m = np.zeros((yy.shape[0], xx.shape[1]), bool)
    for _ in range(int(rng.integers(3, 6))):
        cx, cy = x + rng.uniform(-0.7, 0.7) * w, y + rng.uniform(-0.2, 0.1) * w
        rx = rng.uniform(0.3, 0.45) * w
        m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / (rx * 0.75)) ** 2 <= 1
    m &= yy <= y + w * 0.12  # flat bottom
    cv.paint(b, m, _shade(base, yy, xx, gy=-0.9, y0=y), _L["cloud"])


def _draw_mountain(cv, rng, hy):
    w = rng.uniform(0.25, 0.5)
    x = rng.uniform(0.0, 1.0)
    peak = hy - rng.uniform(0.1, min(0.3, hy - 0.05))
    b = cv.box(x - w, peak, x + w, hy)
    if b is None:
        return
    yy, xx = b[4], b[5]
    slope = (hy - peak) / w
    ph = rng.uniform(0, 6.28)
    edge = peak + slope * np.abs(xx - x) + 0.01 * np.sin(xx * 90 + ph) + 0.006 * np.sin(xx * 230)
    m = yy >= edge
    base = _jitter(rng, _pick(rng, [(110, 105, 100), (120, 95, 75), (90, 100, 125)]), 15)
    rgb = _shade(base, yy, xx, gy=0.5, y0=hy) * np.where(xx < x, 1.12, 0.88)[..., None]
    if rng.random() < 0.6:  # snow cap
        snow = yy < peak + (hy - peak) * rng.uniform(0.2, 0.35) + 0.012 * np.sin(xx * 150)
        rgb = np.where(snow[..., None], _shade((240, 242, 248), yy, xx, gy=-0.3, y0=peak), rgb)
    cv.paint(b, m, rgb, _L["mountain"])


_GROUND_COLORS = {
    "grass": [(70, 150, 50), (95, 165, 60), (60, 125, 45), (120, 160, 60)],
    "sand": [(225, 200, 140), (235, 210, 160), (210, 185, 130)],
    "road": [(100, 100, 105), (85, 85, 90), (120, 118, 115)],
    "water": [(40, 100, 180), (30, 80, 150), (50, 120, 170)],
}


def _draw_ground(cv, rng, kind, y0, y1, noise_rng):
    b = cv.box(0, y0, 1, y1)
    if b is None:
        return
    yy, xx = b[4], b[5]
    base = _jitter(rng, _GROUND_COLORS[kind][int(rng.integers(len(_GROUND_COLORS[kind])))], 10)
    rgb = _shade(base, yy, xx, gy=0.35, gx=rng.uniform(-0.1, 0.1), y0=y0, x0=0.5)
    h, w = yy.shape[0], xx.shape[1]
    if kind == "grass":  # blades: vertical speckle
        rgb *= (1 + 0.08 * noise_rng.standard_normal((h, w), dtype=np.float32))[..., None]
    elif kind == "sand":
        rgb *= (1 + 0.05 * noise_rng.standard_normal((h, w), dtype=np.float32))[..., None]
    elif kind == "water":  # ripples: light horizontal streaks
        ph = rng.uniform(0, 6.28)
        rip = np.sin(yy * 180 + 3 * np.sin(xx * 25 + ph)) > 0.85
        rgb = _mix(rgb, (150, 190, 230), rip * 0.5)
    elif kind == "road":  # dashed center line
        yc = (y0 + y1) / 2
        line = (np.abs(yy - yc) < 0.008 + 0.006 * (yy - y0)) & (np.mod(xx, 0.16) < 0.09)
        rgb = np.where(line[..., None], np.float32(235), rgb)
    cv.paint(b, None, rgb, _L[kind])


def _draw_tree(cv, rng, x, base_y, s):
    s *= 1.3
    tw, th = 0.025 * s, rng.uniform(0.06, 0.1) * s
    cw, ch = rng.uniform(0.07, 0.1) * s, rng.uniform(0.1, 0.16) * s
    conifer = rng.random() < 0.4
    # trunk (wood)
    b = cv.box(x - tw / 2, base_y - th - ch * 0.2, x + tw / 2, base_y)
    if b is not None:
        rgb = _wood(rng, b[4], b[5], _jitter(rng, (110, 75, 45), 12), vertical=True)
        cv.paint(b, None, rgb, _L["tree"], _L["trunk"], _L["wood"])
    # crown
    top = base_y - th - ch
    b = cv.box(x - cw, top, x + cw, base_y - th + ch * 0.15)
    if b is None:
        return
    yy, xx = b[4], b[5]
    if conifer:
        m = (yy >= top) & (np.abs(xx - x) <= cw * (yy - top) / (ch * 1.15))
        base = _jitter(rng, (35, 100, 55), 15)
    else:
        cy = top + ch / 2
        m = ((xx - x) / cw) ** 2 + ((yy - cy) / (ch / 2)) ** 2 <= 1
        base = _jitter(rng, (60, 140, 50), 20)
    rgb = _shade(base, yy, xx, gy=-1.2, gx=-1.5, y0=top + ch / 2, x0=x)
    tex = 0
    if not conifer and rng.random() < 0.3:  # fruit tree: dotted crown
        per = rng.uniform(0.03, 0.045) * max(s, 0.8)
        rgb = _mix(rgb, _jitter(rng, _pick(rng, [(220, 40, 30), (240, 150, 30)]), 10),
                   _dots(yy, xx, per, per * 0.3))
        tex = _L["dotted"]
    cv.paint(b, m, rgb, _L["tree"], _L["crown"], 0, tex)


def _draw_house(cv, rng, x, base_y, s, night):
    w = rng.uniform(0.16, 0.24) * s
    h = w * rng.uniform(0.6, 0.85)
    x0, x1, top = x - w / 2, x + w / 2, base_y - h
    # wall: brick (material), striped siding (texture) or plain paint
    b = cv.box(x0, top, x1, base_y)
    if b is not None:
        yy, xx = b[4], b[5]
        kind = _pick(rng, ["brick", "brick", "striped", "plain", "plain"])
        mat = tex = 0
        if kind == "brick":
            bh = rng.uniform(0.04, 0.05) * max(0.8, s * 0.8)
            row = np.floor((yy - top) / bh)
            mortar = (np.mod(yy - top, bh) < bh * 0.22) | (
                np.mod(xx - x0 + (row % 2) * bh, 2 * bh) < bh * 0.22)
            brick = _jitter(rng, (165, 70, 50), 15)
            rgb = _mix(_shade(brick, yy, xx, gx=-0.8, x0=x), (200, 195, 185), mortar)
            mat = _L["brick"]
        else:
            paint = _jitter(rng, _pick(rng, [(235, 225, 200), (210, 190, 150), (190, 210, 225),
                                             (240, 200, 120), (200, 170, 200)]), 15)
            rgb, tex = _pattern_surface(rng, yy, xx, paint, "striped" if kind == "striped" else "")
        cv.paint(b, None, rgb, _L["house"], _L["wall"], mat, tex)
    # roof: triangle with overhang, plain / striped / checkered (tiles)
    rh = h * rng.uniform(0.45, 0.7)
    ov = w * 0.1
    b = cv.box(x0 - ov, top - rh, x1 + ov, top + 0.002)
    if b is not None:
        yy, xx = b[4], b[5]
        m = (yy >= top - rh) & (np.abs(xx - x) <= (w / 2 + ov) * (yy - (top - rh)) / rh)
        kind = _pick(rng, ["", "", "striped", "checkered"])
        base = _jitter(rng, _pick(rng, [(150, 50, 40), (90, 60, 50), (70, 70, 80),
                                        (180, 100, 50)]), 15)
        rgb, tex = _pattern_surface(rng, yy, xx, base, kind)
        cv.paint(b, m, rgb, _L["house"], _L["roof"], 0, tex)
    # door (wood)
    dw, dh = w * rng.uniform(0.18, 0.25), h * rng.uniform(0.45, 0.6)
    dx = x + rng.uniform(-0.25, 0.25) * w
    b = cv.box(dx - dw / 2, base_y - dh, dx + dw / 2, base_y)
    door_x = (dx - dw / 2, dx + dw / 2)
    if b is not None:
        rgb = _wood(rng, b[4], b[5], _jitter(rng, _pick(rng, [(120, 70, 40), (90, 50, 30),
                                                              (60, 90, 60)]), 12))
        cv.paint(b, None, rgb, _L["house"], _L["door"], _L["wood"])
    # windows (glass), avoiding the door
    ww = w * rng.uniform(0.16, 0.22)
    wy = top + h * 0.22
    lit = night and rng.random() < 0.7
    for wx in (x0 + w * 0.22, x1 - w * 0.22):
        if wx + ww / 2 > door_x[0] - 0.005 and wx - ww / 2 < door_x[1] + 0.005:
            continue
        b = cv.box(wx - ww / 2, wy, wx + ww / 2, wy + ww)
        if b is None:
            continue
        glass = (250, 220, 110) if lit else (170, 205, 235)
        rgb = _shade(_jitter(rng, glass, 10), b[4], b[5], gy=-1.5, gx=1.5, y0=wy, x0=wx)
        cv.paint(b, None, rgb, _L["house"], _L["window"], _L["glass"])
        if lit:
            if cv.lit is None:
                cv.lit = np.zeros(cv.key.shape, bool)
            cv.lit[b[0]:b[1], b[2]:b[3]] = True


def _draw_car(cv, rng, x, base_y, s):
    w = rng.uniform(0.16, 0.22) * s
    bh = w * 0.28
    r = w * 0.11
    x0, x1 = x - w / 2, x + w / 2
    body_top = base_y - r - bh
    kind = _pick(rng, ["", "", "", "striped", "dotted", "checkered"])
    base = _jitter(rng, _pick(rng, [(200, 30, 30), (30, 60, 180), (230, 200, 40),
                                    (240, 240, 240), (40, 40, 45), (40, 140, 60),
                                    (240, 120, 30)]), 15)
    # lower body and cabin (trapezoid), one surface
    ch = bh * 0.9
    b = cv.box(x0, body_top - ch, x1, base_y - r * 0.6)
    if b is None:
        return
    yy, xx = b[4], b[5]
    cab_l, cab_r = x0 + w * 0.2, x1 - w * 0.25
    slant = (body_top - yy) * 0.6
    lower = (yy >= body_top)
    cabin = (yy >= body_top - ch) & (yy < body_top) & (xx >= cab_l + slant) & (xx <= cab_r - slant)
    rgb, tex = _pattern_surface(rng, yy, xx, base, kind)
    cv.paint(b, lower | cabin, rgb, _L["car"], _L["body"], 0, tex)
    # car windows (glass), inside the cabin
    inset = ch * 0.2
    wm = (yy >= body_top - ch + inset) & (yy < body_top - inset * 0.3) & \
         (xx >= cab_l + slant + inset) & (xx <= cab_r - slant - inset) & \
         (np.abs(xx - (cab_l + cab_r) / 2) > w * 0.02)
    glass = _shade(_jitter(rng, (150, 190, 220), 10), yy, xx, gx=2.0, x0=x)
    cv.paint(b, wm, glass, _L["car"], _L["window"], _L["glass"])
    # wheels
    for wx in (x0 + w * 0.22, x1 - w * 0.22):
        bw = cv.box(wx - r, base_y - 2 * r, wx + r, base_y)
        if bw is None:
            continue
        yy, xx = bw[4], bw[5]
        d2 = ((yy - (base_y - r)) ** 2 + (xx - wx) ** 2) / (r * r)
        rgb = _mix(_shade((35, 35, 38), yy, xx, gy=-1.0, y0=base_y), (150, 150, 155), d2 < 0.2)
        cv.paint(bw, d2 <= 1, rgb, _L["car"], _L["wheel"])


def _draw_fence(cv, rng, x0, x1, base_y, s):
    h = rng.uniform(0.07, 0.1) * s
    p = rng.uniform(0.035, 0.05) * max(s, 0.8)
    b = cv.box(x0, base_y - h - p * 0.3, x1, base_y)
    if b is None:
        return
    yy, xx = b[4], b[5]
    top = base_y - h
    u = np.mod(xx - x0, p)
    picket = (u < p * 0.55) & (yy >= top + np.abs(u - p * 0.275) * 0.6 - p * 0.15)
    rh = h * 0.12
    rails = (np.abs(yy - (top + h * 0.3)) < rh) | (np.abs(yy - (top + h * 0.75)) < rh)
    rails &= yy >= top
    base = _jitter(rng, _pick(rng, [(150, 105, 60), (185, 150, 100), (230, 225, 215)]), 12)
    rgb = _wood(rng, yy, xx, base, vertical=True)
    rgb = np.where(rails[..., None] & ~picket[..., None], rgb * 0.85, rgb)
    cv.paint(b, picket | rails, rgb, _L["fence"], 0, _L["wood"])


# --------------------------------------------------------------------------- composition


def _plan(rng, cls: str, hy: float, night: bool) -> dict:
    """Decide the composition of a scene of class ``cls`` (see module docstring)."""
    P = {"ground": [("grass", 1.0)], "trees": 0, "houses": 0, "cars": 0, "fences": 0,
         "mountains": 0, "sun": (not night) and rng.random() < 0.5,
         "clouds": int(rng.integers(0, 4))}
    g = 1.0 - hy
    if cls == "forest":
        P["trees"] = int(rng.integers(6, 12))
        P["mountains"] = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0
        P["fences"] = int(rng.random() < 0.1)
    elif cls == "village":
        P["houses"] = int(rng.integers(2, 5))
        P["trees"] = int(rng.integers(1, 4))
        P["fences"] = int(rng.random() < 0.25)
        P["cars"] = int(rng.random() < 0.1)
        P["mountains"] = int(rng.random() < 0.2)
    elif cls == "street":
        strip = hy + g * rng.uniform(0.2, 0.35)
        P["ground"] = [("grass", (strip - hy) / g), ("road", 1.0)]
        P["houses"] = int(rng.integers(2, 5))
        P["cars"] = int(rng.integers(1, 4))
        P["trees"] = int(rng.integers(0, 2))
    elif cls == "beach":
        P["ground"] = [("water", rng.uniform(0.2, 0.45)), ("sand", 1.0)]
        P["sun"] = (not night) and rng.random() < 0.85
        P["trees"] = int(rng.integers(0, 2))
        P["mountains"] = int(rng.random() < 0.15)
    elif cls == "lake":
        P["ground"] = [("water", rng.uniform(0.4, 0.65)), ("grass", 1.0)]
        P["mountains"] = int(rng.integers(1, 4))
        P["trees"] = int(rng.integers(0, 3))
        P["houses"] = int(rng.random() < 0.2)
    elif cls == "field":
        P["fences"] = int(rng.integers(1, 3))
        P["trees"] = int(rng.integers(0, 3))
        P["houses"] = int(rng.random() < 0.25)
        P["mountains"] = int(rng.random() < 0.3)
    return P


def _render_2x(seed: int, size: int):
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, 7919, int(size)])
    cls_idx = int(rng.integers(len(SCENE_CLASSES)))
    cls = SCENE_CLASSES[cls_idx]
    night = bool(rng.random() < 0.25)
    hy = float(rng.uniform(0.35, 0.55))
    # snap the horizon to the output pixel grid so sky/ground labels are exact
    hy = round(hy * size) / size
    plan = _plan(rng, cls, hy, night)
    cv = _Canvas(2 * size)
    drawn: list[str] = []

    _draw_sky(cv, rng, hy, night)
    if plan["sun"]:
        _draw_sun(cv, rng, hy)
        drawn.append("sun")
    for _ in range(plan["clouds"]):
        _draw_cloud(cv, rng, hy, night)
        drawn.append("cloud")
    for _ in range(plan["mountains"]):
        _draw_mountain(cv, rng, hy)
        drawn.append("mountain")
    g = 1.0 - hy
    bands = []
    y = hy
    for kind, frac in plan["ground"]:
        y1 = hy + g * frac
        y1 = 1.0 if frac >= 1.0 else round(y1 * size) / size
        _draw_ground(cv, rng, kind, y, y1, noise_rng)
        bands.append((kind, y, y1))
        drawn.append(kind)
        y = y1

    def spot(kinds, lo=0.03, hi=1.0):
        """A base y on a band of one of ``kinds`` and its perspective scale."""
        ok = [bd for bd in bands if bd[0] in kinds] or bands[-1:]
        kind, a, b = ok[int(rng.integers(len(ok)))]
        a = max(a + lo * g, hy + 0.03)
        b = min(b, hy + hi * g, 0.99)
        by = float(rng.uniform(a, max(a, b)))
        t = (by - hy) / g
        return by, 0.75 + 0.7 * t

    items = []  # (base_y, kind, x, scale)
    street = cls == "street"
    house_xs = np.sort(rng.permutation(5)[: plan["houses"]]) if plan["houses"] else []
    for i in range(plan["houses"]):
        if street:
            by, s = spot(("grass",), 0.3, 1.0)
        else:
            by, s = spot(("grass", "sand"), 0.1, 0.6)
        x = (house_xs[i] + rng.uniform(0.3, 0.7)) / 5
        items.append((by, "house", x, s))
    for _ in range(plan["trees"]):
        by, s = spot(("grass", "sand"), 0.05, 1.0)
        items.append((by, "tree", float(rng.uniform(0.02, 0.98)), s))
    for _ in range(plan["cars"]):
        by, s = spot(("road",) if street else ("grass",), 0.3, 1.0)
        items.append((by, "car", float(rng.uniform(0.1, 0.9)), s))
    for _ in range(plan["fences"]):
        by, s = spot(("grass", "sand"), 0.3, 1.0)
        x0 = float(rng.uniform(-0.1, 0.5))
        items.append((by, "fence", (x0, x0 + float(rng.uniform(0.4, 1.0))), s))
    items.sort(key=lambda it: it[0])
    for by, kind, x, s in items:
        if kind == "tree":
            _draw_tree(cv, rng, x, by, s)
        elif kind == "house":
            _draw_house(cv, rng, x, by, s, night)
        elif kind == "car":
            _draw_car(cv, rng, x, by, s)
        else:
            _draw_fence(cv, rng, x[0], x[1], by, s)
        drawn.append(kind)

    if night:  # darken and tint everything but the sky and lit windows
        keep = (cv.key & 0xFF) == _L["sky"]
        if cv.lit is not None:
            keep |= cv.lit
        dark = cv.rgb * np.array([0.42, 0.45, 0.6], np.float32)
        cv.rgb = np.where(keep[..., None], cv.rgb, dark)
    return cv, cls_idx, night, hy, noise_rng, sorted(set(drawn))


def _downsample_labels(key: np.ndarray) -> np.ndarray:
    """Packed (2n, 2n) label canvas -> (n, n): all layers from the sub-pixel of each 2x2
    block that shows the block's most frequent object (first such sub-pixel on ties)."""
    ks = [key[0::2, 0::2], key[0::2, 1::2], key[1::2, 0::2], key[1::2, 1::2]]
    objs = [k & 0xFF for k in ks]
    best, best_n = ks[0], None
    for i in range(4):
        n_i = sum((objs[i] == objs[j]).astype(np.uint8) for j in range(4) if j != i)
        if best_n is None:
            best_n = n_i
            continue
        better = n_i > best_n
        best = np.where(better, ks[i], best)
        best_n = np.maximum(best_n, n_i)
    return best


def render_scene(seed: int, size: int = 64) -> Scene:
    """Render the toy scene for ``seed`` at ``size`` x ``size`` pixels."""
    size = int(size)
    if size < 8:
        raise ValueError(f"toy scenes need size >= 8, got {size}")
    cv, cls_idx, night, hy, noise_rng, drawn = _render_2x(int(seed), size)
    c = cv.rgb
    rgb = (c[0::2, 0::2] + c[0::2, 1::2] + c[1::2, 0::2] + c[1::2, 1::2]) * np.float32(0.25)
    rgb += noise_rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(2.0)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    key = _downsample_labels(cv.key)
    layers = {
        "color": COLOR_LABEL_NUMBERS[name_colors(image)],
        "object": (key & 0xFF).astype(np.int32),
        "part": ((key >> 8) & 0xFF).astype(np.int32),
        "material": ((key >> 16) & 0xFF).astype(np.int32),
        "texture": (key >> 24).astype(np.int32),
    }
    return Scene(image=image, layers=layers, scene_class=cls_idx, night=night, horizon=hy,
                 seed=int(seed), size=size, objects=drawn)


def render_batch(seeds: Iterable[int], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,H,W,3 uint8) and scene classes (N int64) for ``seeds``."""
    seeds = list(seeds)
    images = np.empty((len(seeds), size, size, 3), np.uint8)
    classes = np.empty(len(seeds), np.int64)
    for i, s in enumerate(seeds):
        sc = render_scene(s, size)
        images[i] = sc.image
        classes[i] = sc.scene_class
    return images, classes


def image_seed(seed: int, index: int) -> int:
    """The scene seed of image ``index`` of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))
