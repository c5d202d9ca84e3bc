"""Synthetic writers: digits drawn as mouse strokes, with one consistent style per writer.

Each digit has stroke templates in a unit box (x to the right, y down), several of them for digits people
write differently (a 1 with a long flag and a foot, a 7 with a crossbar, an open 4, a 9 with a straight
stem, a 2 with a loop...). A writer fixes which variant it uses for each digit and its slant, proportions,
stroke width and how shakily it draws; every sample then varies a little (seeded), the way one person's
digits do. `strokes` gives the polylines in canvas pixels (what the browser tests draw with the mouse on the
dashboard's 280x280 canvas), `render` rasterises them offline like that canvas (white round-capped lines on
black, RGBA) for the library tests and benchmarks/personal.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

CANVAS_SIZE = 280  # dashboard/widgets.py
CANVAS_STROKE = 18  # the canvas's stroke width there
POINT_SPACING = 0.02  # of the unit box between polyline points: ~5 px on the canvas, smooth under the mouse

Point = tuple[float, float]
Polyline = list[Point]


# --- curve pieces in the unit box ------------------------------------------------------------------
def _n(length: float) -> int:
    return max(2, math.ceil(length / POINT_SPACING) + 1)


def line(*points: Point) -> Polyline:
    """Straight segments through the points, densely sampled."""
    out: Polyline = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = _n(math.hypot(x1 - x0, y1 - y0))
        out += [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in np.linspace(0, 1, n)[1:]]
    return out


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Polyline:
    """An elliptic arc; angles in degrees, 0 to the right, 90 down (increasing runs clockwise on screen)."""
    n = _n(abs(math.radians(end - start)) * max(rx, ry))
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def bezier(p0: Point, p1: Point, p2: Point, p3: Point) -> Polyline:
    length = sum(math.dist(a, b) for a, b in ((p0, p1), (p1, p2), (p2, p3)))
    t = np.linspace(0, 1, _n(length))[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    return [(float(x), float(y)) for x, y in pts]


def joined(*pieces: Polyline) -> Polyline:
    """One stroke through several pieces (the pen stays down between them)."""
    out: Polyline = []
    for piece in pieces:
        out += piece[1:] if out and math.dist(out[-1], piece[0]) < 1e-9 else piece
    return out


# --- templates: digit -> variant -> strokes (t: the writer's upper/lower split, 0.5 = even) ---------------
def _zero(variant: str, t: float) -> list[Polyline]:
    if variant == "round":
        return [arc(0.5, 0.5, 0.3, 0.36, -100, 265)]
    oval = arc(0.5, 0.5, 0.21, 0.4, -100, 265)
    if variant == "slashed":
        return [oval, line((0.7, 0.18), (0.3, 0.82))]
    return [oval]


def _one(variant: str, t: float) -> list[Polyline]:
    if variant == "flag":
        return [line((0.36, 0.27), (0.52, 0.1), (0.52, 0.9))]
    if variant == "flag_foot":
        return [line((0.24, 0.4), (0.54, 0.1), (0.54, 0.9)), line((0.3, 0.9), (0.78, 0.9))]
    return [line((0.52, 0.1), (0.48, 0.9))]


def _two(variant: str, t: float) -> list[Polyline]:
    if variant == "z":
        return [line((0.27, 0.14), (0.73, 0.14), (0.27, 0.9), (0.76, 0.9))]
    top = arc(0.5, 0.3, 0.22, 0.2, 195, 360)
    if variant == "loop":
        down = bezier((0.72, 0.3), (0.72, 0.55), (0.45, 0.72), (0.3, 0.86))
        loop = arc(0.37, 0.8, 0.1, 0.08, 135, -180)
        return [joined(top, down, loop, line(loop[-1], (0.78, 0.88)))]
    down = bezier((0.72, 0.3), (0.72, 0.55), (0.4, 0.75), (0.26, 0.9))
    return [joined(top, down, line((0.26, 0.9), (0.77, 0.9)))]


def _three(variant: str, t: float) -> list[Polyline]:
    mid = 0.1 + 0.8 * t
    lower = arc(0.47, (mid + 0.9) / 2, 0.25, (0.9 - mid) / 2, 255, 520)
    if variant == "flat_top":
        return [joined(line((0.28, 0.12), (0.72, 0.12), (0.42, mid)), lower)]
    upper = arc(0.47, (0.1 + mid) / 2, 0.22, (mid - 0.1) / 2, 200, 455)
    return [joined(upper, lower)]


def _four(variant: str, t: float) -> list[Polyline]:
    bar = 0.1 + 0.8 * (t + 0.1)
    if variant == "open":
        return [line((0.3, 0.1), (0.26, bar), (0.8, bar)), line((0.66, 0.25), (0.64, 0.9))]
    return [line((0.62, 0.9), (0.62, 0.1), (0.22, bar), (0.8, bar))]


def _five(variant: str, t: float) -> list[Polyline]:
    if variant == "round_belly":
        stem = line((0.34, 0.1), (0.31, 0.36))
        belly = arc(0.5, 0.62, 0.27, 0.28, 225, 505)
    else:
        stem = line((0.33, 0.1), (0.3, 0.45))
        belly = arc(0.5, 0.66, 0.23, 0.23, 220, 500)
    return [joined(stem, belly), line((0.33, 0.1), (0.72, 0.1))]


def _six(variant: str, t: float) -> list[Polyline]:
    if variant == "straight":
        descent = line((0.64, 0.1), (0.29, 0.68))
    else:
        descent = bezier((0.68, 0.1), (0.42, 0.18), (0.26, 0.45), (0.28, 0.7))
    loop = arc(0.5, 0.7, 0.22, 0.2, 180, -170)
    return [joined(descent, loop)]


def _seven(variant: str, t: float) -> list[Polyline]:
    if variant == "hooked":
        return [line((0.26, 0.26), (0.26, 0.13), (0.75, 0.13), (0.44, 0.9))]
    stroke = line((0.25, 0.13), (0.75, 0.13), (0.42, 0.9))
    if variant == "crossbar":
        return [stroke, line((0.37, 0.52), (0.74, 0.5))]
    return [stroke]


def _eight(variant: str, t: float) -> list[Polyline]:
    mid = 0.1 + 0.8 * t
    if variant == "two_loops":
        return [
            arc(0.5, (0.1 + mid) / 2, 0.18, (mid - 0.1) / 2, -90, 270),
            arc(0.5, (mid + 0.9) / 2, 0.23, (0.9 - mid) / 2, -90, 270),
        ]
    s = np.linspace(0, 2 * math.pi, _n(3.0))  # one stroke, crossing itself in the middle
    pts = []
    for a in s:
        y = 0.5 - 0.4 * math.cos(a)
        width = 0.18 if y < mid else 0.23
        pts.append((0.5 - width * math.sin(2 * a) * (1.0 if y < mid else 1.1), y))
    return [pts]


def _nine(variant: str, t: float) -> list[Polyline]:
    mid = 0.1 + 0.8 * t * 0.9
    r = (mid - 0.1) / 2
    loop = arc(0.5, 0.1 + r, 0.21, r, 0, -360)
    right = (0.71, 0.1 + r)
    if variant == "straight_stem":
        return [joined(loop, line(right, (0.71, 0.9)))]
    if variant == "hooked":
        return [joined(loop, bezier(right, (0.72, 0.7), (0.66, 0.94), (0.36, 0.85)))]
    return [joined(loop, bezier(right, (0.71, 0.55), (0.68, 0.75), (0.58, 0.9)))]


TEMPLATES: dict[int, tuple[Callable[[str, float], list[Polyline]], tuple[str, ...]]] = {
    0: (_zero, ("oval", "round", "slashed")),
    1: (_one, ("stick", "flag", "flag_foot")),
    2: (_two, ("plain", "loop", "z")),
    3: (_three, ("round", "flat_top")),
    4: (_four, ("closed", "open")),
    5: (_five, ("plain", "round_belly")),
    6: (_six, ("curved", "straight")),
    7: (_seven, ("plain", "crossbar", "hooked")),
    8: (_eight, ("figure", "two_loops")),
    9: (_nine, ("round_stem", "straight_stem", "hooked")),
}


@dataclass(frozen=True)
class Writer:
    name: str
    slant: float  # horizontal shift per unit height: 0.3 leans the top right, -0.2 left
    width_px: float  # stroke width on the 280-px canvas
    aspect: float  # width / height of the digits, relative to the templates
    jitter: float  # how shaky: 0 smooth, 1 a person with a mouse, 2 scrawled
    styles: dict[int, str] = field(default_factory=dict)  # digit -> variant; others take the first
    seed: int = 0
    top: float = 0.5  # where two-part digits (3, 8, 9, the 4's bar) split, of the height

    def variant(self, digit: int) -> str:
        return self.styles.get(digit, TEMPLATES[digit][1][0])


WRITERS: list[Writer] = [
    Writer("neat", slant=0.05, width_px=18, aspect=1.0, jitter=0.5, seed=1),
    Writer(
        "european",
        slant=0.3,
        width_px=24,
        aspect=1.0,
        jitter=0.8,
        styles={0: "slashed", 1: "flag_foot", 2: "loop", 4: "open", 7: "crossbar", 9: "straight_stem"},
        seed=2,
    ),
    Writer(
        "leftward",
        slant=-0.3,
        width_px=20,
        aspect=0.8,
        jitter=0.8,
        styles={2: "z", 3: "flat_top", 6: "straight", 8: "two_loops", 9: "hooked"},
        seed=3,
        top=0.4,
    ),
    Writer(
        "wide-thin",
        slant=0.0,
        width_px=8,
        aspect=1.6,
        jitter=1.0,
        styles={0: "slashed", 1: "flag", 4: "open", 5: "round_belly", 7: "hooked", 8: "two_loops", 9: "hooked"},
        seed=4,
        top=0.45,
    ),
    Writer(
        "bold-slanted",
        slant=0.35,
        width_px=30,
        aspect=1.1,
        jitter=0.7,
        styles={1: "flag", 3: "flat_top", 7: "crossbar", 9: "straight_stem"},
        seed=5,
        top=0.58,
    ),
    Writer(
        "scrawl",
        slant=0.15,
        width_px=14,
        aspect=0.7,
        jitter=2.0,
        styles={1: "flag", 2: "loop", 4: "open", 6: "straight", 7: "hooked", 9: "hooked"},
        seed=6,
        top=0.42,
    ),
]


def writer(name: str) -> Writer:
    for w in WRITERS:
        if w.name == name:
            return w
    raise KeyError(f"no synthetic writer {name!r}; known: {', '.join(w.name for w in WRITERS)}")


def strokes(writer: Writer, digit: int, sample: int, size: int = CANVAS_SIZE) -> list[Polyline]:
    """Digit `digit` as `writer` draws it the `sample`-th time: polylines in canvas pixels (0..size)."""
    make, variants = TEMPLATES[digit]
    variant = writer.variant(digit)
    if variant not in variants:
        raise ValueError(f"digit {digit} has no variant {variant!r}; choose one of {', '.join(variants)}")
    rng = np.random.default_rng([writer.seed, digit, sample])
    # per sample: a little tilt, size, place, and how the proportions come out this time
    top = float(np.clip(writer.top + rng.normal(0, 0.02), 0.3, 0.7))
    angle = math.radians(rng.normal(0, 3.0))
    scale = 0.74 * (1 + rng.normal(0, 0.05))  # the digit's height as a share of the canvas
    centre = np.array([0.5, 0.5]) + rng.normal(0, 0.03, 2)
    slant = writer.slant + rng.normal(0, 0.04)
    aspect = writer.aspect * (1 + rng.normal(0, 0.05))
    out: list[Polyline] = []
    for stroke in make(variant, top):
        pts = np.asarray(stroke, dtype=float)
        # a shaky hand: smooth random offsets along the stroke (a few knots, interpolated)
        knots = max(2, len(pts) // 8)
        offsets = rng.normal(0, 0.012 * writer.jitter, (knots, 2))
        where = np.linspace(0, knots - 1, len(pts))
        pts = pts + np.stack([np.interp(where, np.arange(knots), offsets[:, k]) for k in range(2)], 1)
        x, y = pts[:, 0] - 0.5, pts[:, 1] - 0.5
        x = x * aspect - slant * y
        xr = x * math.cos(angle) - y * math.sin(angle)
        yr = x * math.sin(angle) + y * math.cos(angle)
        px = (centre[0] + xr * scale) * size
        py = (centre[1] + yr * scale) * size
        margin = writer.width_px / 2 + 1
        out.append(
            [
                (float(a), float(b))
                for a, b in zip(np.clip(px, margin, size - margin), np.clip(py, margin, size - margin))
            ]
        )
    return out


def render(strokes: list[Polyline], size: int = CANVAS_SIZE, width: float | None = None) -> np.ndarray:
    """The strokes as the canvas draws them: white round-capped, round-joined lines on black, antialiased
    (drawn at 2x and scaled down). Returns (size, size, 4) uint8 RGBA, opaque."""
    from PIL import Image, ImageDraw

    factor = 2
    w = (CANVAS_STROKE if width is None else width) * factor
    img = Image.new("L", (size * factor, size * factor), 0)
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        pts = [(x * factor, y * factor) for x, y in stroke]
        if len(pts) > 1:
            draw.line(pts, fill=255, width=max(1, round(w)), joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    gray = np.asarray(img.resize((size, size), Image.Resampling.BOX))
    rgba = np.empty((size, size, 4), dtype=np.uint8)
    rgba[:, :, :3] = gray[:, :, None]
    rgba[:, :, 3] = 255
    return rgba


def draw(writer: Writer, digit: int, sample: int, size: int = CANVAS_SIZE) -> np.ndarray:
    """`render(strokes(...))` at the writer's own stroke width."""
    return render(strokes(writer, digit, sample, size), size, writer.width_px * size / CANVAS_SIZE)
