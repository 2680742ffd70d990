"""Synthetic frontal chest radiographs with known findings at known places.

No chest X-ray data or pretrained weights can be fetched where this engine is built,
so the demo model is trained on these phantoms. They are *plausible cartoons*, not
anatomy: a body outline, two lungs with vessel markings, heart, mediastinum, spine,
diaphragm domes, ribs and clavicles, under varying exposure and noise, with each of
the 11 conditions drawn as a recognisable signature:

==================  ==========================================================
Tuberculosis        upper-zone patchy opacity with a cavity (bright ring, dark centre)
Cardiomegaly        heart widened so the cardiothoracic ratio is well above 0.5
Pleural Thickening  dense band along the lateral chest wall or an apical cap
Pleural Effusion    basal opacity with a meniscus rising laterally
Pneumothorax        lateral crescent without lung markings, bounded by a pleural line
Consolidation       large dense patch with dark branching air bronchograms
Atelectasis         plate-like dense linear band in a lower zone
Nodule/Mass         round well-defined opacity, 1 to 5 % of the image width
Fibrosis            reticular net of fine lines in both lower zones
Infiltration        several hazy ill-defined patches in both lungs
Calcification       a cluster of tiny, very dense dots
==================  ==========================================================

Everything is drawn in normalised coordinates (x to the right of the image, y down,
both in [0, 1]) so a phantom renders at any size; the image is square. As in a PA
view, the patient's right lung is on the image's left. Values are display intensities
in [0, 1] (air dark, bone bright), the same domain ``inference.dicom_read`` produces.

A phantom is fully determined by ``(seed, index)``: training, evaluation and the
DICOM writer all call :func:`make_phantom` and get identical anatomy and boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.labels import LABELS

#: Conditions whose signature sits at one place; pointing accuracy is scored on these.
#: Fibrosis and Infiltration are drawn as diffuse patterns, so they have no one place.
LOCALIZED: frozenset[str] = frozenset(LABELS) - {"Fibrosis", "Infiltration"}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, normalised


@dataclass
class Phantom:
    """One synthetic radiograph: ``image`` float32 (size, size) in [0, 1]."""

    image: np.ndarray
    labels: np.ndarray  # float32 (11,), 1.0 where the condition is drawn
    boxes: dict[str, Box] = field(default_factory=dict)

    @property
    def findings(self) -> list[str]:
        return [name for name, on in zip(LABELS, self.labels) if on]


@dataclass
class _Anatomy:
    """Randomised layout shared by all layers of one phantom."""

    cx: float  # body centre x
    scale: float
    lung_r: tuple[float, float, float, float]  # right lung (image left): cx, cy, rx, ry
    lung_l: tuple[float, float, float, float]
    dome_r: float  # diaphragm dome top y, right side
    dome_l: float
    heart: tuple[float, float, float, float]  # cx, cy, rx, ry


class _Canvas:
    """Drawing helpers in normalised coordinates over a square float32 image."""

    def __init__(self, size: int) -> None:
        self.size = size
        ax = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = ax[None, :]
        self.y = ax[:, None]

    def px(self, v: float) -> int:
        return round(v * self.size)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return self.px(x), self.px(y)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def gaussian(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-(((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2) / 2.0)

    def blank(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.float32)

    def blur(self, img: np.ndarray, sigma: float) -> np.ndarray:
        s = max(sigma * self.size, 0.3)
        return cv2.GaussianBlur(img, (0, 0), s)

    def thickness(self, t: float) -> int:
        return max(1, round(t * self.size))


def _layout(rng: np.random.Generator) -> _Anatomy:
    s = rng.uniform(0.94, 1.06)
    cx = 0.5 + rng.uniform(-0.025, 0.025)
    cy = 0.47 + rng.uniform(-0.03, 0.03)
    lung_r = (cx - 0.19 * s, cy, 0.135 * s, 0.29 * s)
    lung_l = (cx + 0.19 * s, cy + 0.01, 0.125 * s, 0.28 * s)
    dome_r = cy + 0.20 * s + rng.uniform(-0.02, 0.02)
    dome_l = cy + 0.23 * s + rng.uniform(-0.02, 0.02)
    heart = (cx + 0.05 * s, cy + 0.13 * s, 0.11 * s * rng.uniform(0.92, 1.05), 0.105 * s)
    return _Anatomy(cx, s, lung_r, lung_l, dome_r, dome_l, heart)


def _lung_masks(c: _Canvas, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    masks = []
    for (lx, ly, rx, ry), dome in ((a.lung_r, a.dome_r), (a.lung_l, a.dome_l)):
        m = c.ellipse(lx, ly, rx, ry)
        # Diaphragm dome: the lung ends on an upward-convex arc.
        dome_curve = dome + 0.9 * ((c.x - lx) / (rx * 1.4)) ** 2 * 0.12
        m &= c.y < dome_curve
        masks.append(m)
    return masks[0], masks[1]


def _sample_in(
    mask: np.ndarray, rng: np.random.Generator, y_range: tuple[float, float] = (0, 1), margin: float = 0.0
) -> tuple[float, float]:
    """A random point inside ``mask`` (optionally eroded by ``margin``) within y_range."""
    size = mask.shape[0]
    m = mask
    if margin > 0:
        k = max(1, int(margin * size))
        m = cv2.erode(mask.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)) > 0
    ys, xs = np.nonzero(m)
    sel = (ys >= y_range[0] * size) & (ys < y_range[1] * size)
    if sel.any():
        ys, xs = ys[sel], xs[sel]
    if len(ys) == 0:
        ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    return (xs[i] + 0.5) / size, (ys[i] + 0.5) / size


def _box(cx: float, cy: float, rx: float, ry: float) -> Box:
    return (max(cx - rx, 0.0), max(cy - ry, 0.0), min(cx + rx, 1.0), min(cy + ry, 1.0))


def _mask_box(mask: np.ndarray, pad: float = 0.01) -> Box:
    ys, xs = np.nonzero(mask)
    n = mask.shape[0]
    return (
        max(xs.min() / n - pad, 0.0),
        max(ys.min() / n - pad, 0.0),
        min((xs.max() + 1) / n + pad, 1.0),
        min((ys.max() + 1) / n + pad, 1.0),
    )


def _vessels(c: _Canvas, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Branching vessel markings radiating from both hila, plus fine texture."""
    img = c.blank()
    for hx, hy, sign in ((a.cx - 0.06, a.heart[1] - 0.12, -1), (a.cx + 0.06, a.heart[1] - 0.11, 1)):
        for _ in range(14):
            ang = rng.uniform(-1.25, 1.25) + (math.pi if sign < 0 else 0.0)
            length = rng.uniform(0.10, 0.24)
            x, y = hx, hy
            w = 0.006
            for step in range(5):
                nx = x + math.cos(ang) * length / 5
                ny = y + math.sin(ang) * length / 5 * 1.3
                cv2.line(img, c.pt(x, y), c.pt(nx, ny), 0.10 * (1 - step / 6), c.thickness(w))
                x, y, w = nx, ny, w * 0.8
                ang += rng.uniform(-0.3, 0.3)
    texture = cv2.resize(
        rng.standard_normal((24, 24)).astype(np.float32), (c.size, c.size), interpolation=cv2.INTER_CUBIC
    )
    return c.blur(img, 0.002) + 0.015 * texture


def _ribs(c: _Canvas, a: _Anatomy) -> np.ndarray:
    img = c.blank()
    t = c.thickness(0.011 * a.scale)
    for side in (-1, 1):
        lx, ly, rx, ry = a.lung_r if side < 0 else a.lung_l
        for k in range(9):
            y0 = ly - ry * 0.95 + k * ry * 0.2
            xs = np.linspace(a.cx + side * 0.03, lx + side * rx * 1.08, 24)
            # Posterior ribs: leave the spine, rise, then fall laterally.
            u = (xs - xs[0]) / (xs[-1] - xs[0])
            ys = y0 - 0.035 * np.sin(u * math.pi * 0.9) + 0.06 * u**2
            pts = np.stack([xs * c.size, ys * c.size], axis=1).astype(np.int32)
            cv2.polylines(img, [pts], False, 0.09, t)
    # Clavicles: oblique bars over the apices.
    for side in (-1, 1):
        p0 = c.pt(a.cx + side * 0.04, a.lung_r[1] - 0.26 * a.scale)
        p1 = c.pt(a.cx + side * 0.30 * a.scale, a.lung_r[1] - 0.31 * a.scale)
        cv2.line(img, p0, p1, 0.16, c.thickness(0.02 * a.scale))
    return c.blur(img, 0.003)


def _anatomy(
    c: _Canvas, a: _Anatomy, cardiomegaly: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Box]:
    img = np.full((c.size, c.size), 0.04, np.float32)
    body = c.ellipse(a.cx, 0.55, 0.45 * a.scale, 0.56 * a.scale)
    img[body] = 0.44
    # Shoulders / neck soft tissue above the thorax.
    img[c.ellipse(a.cx, 0.05, 0.12, 0.12)] = 0.44
    lung_r, lung_l = _lung_masks(c, a)
    lungs = lung_r | lung_l
    img[lungs] = 0.16
    hx, hy, hrx, hry = a.heart
    if cardiomegaly:
        factor = rng.uniform(1.45, 1.65)
        hrx *= factor
        hry *= 1.1
        hx -= 0.02
    heart = c.ellipse(hx, hy, hrx, hry)
    img[heart] = np.maximum(img[heart], 0.5)
    med = (np.abs(c.x - a.cx) < 0.055 * a.scale) & (c.y < hy) & (c.y > 0.08)
    img[med] = np.maximum(img[med], 0.48)
    spine = (np.abs(c.x - a.cx) < 0.03) & body
    img[spine] += 0.05
    dome_y = np.where(c.x < a.cx, a.dome_r, a.dome_l) + 0.05 * ((c.x - a.cx) / 0.3) ** 2
    below = (c.y > dome_y + 0.01) & body & ~lungs
    img[below] = np.maximum(img[below], 0.5)
    return img, lung_r, lung_l, _box(hx, hy, hrx, hry)


def _draw_condition(
    name: str,
    img: np.ndarray,
    c: _Canvas,
    a: _Anatomy,
    lungs: tuple[np.ndarray, np.ndarray],
    markings: np.ndarray,
    rng: np.random.Generator,
) -> Box | None:
    side = int(rng.integers(2))
    lung = lungs[side]
    lx, ly, lrx, lry = a.lung_r if side == 0 else a.lung_l
    top, bottom = ly - lry, ly + lry
    if name == "Nodule/Mass":
        r = rng.uniform(0.018, 0.045)
        x, y = _sample_in(lung, rng, (top + 0.1, bottom - 0.1), margin=r)
        blob = c.blur(c.ellipse(x, y, r, r * rng.uniform(0.9, 1.1)).astype(np.float32), 0.003)
        img += 0.30 * blob
        return _box(x, y, r * 1.3, r * 1.3)
    if name == "Tuberculosis":
        x, y = _sample_in(lung, rng, (top + 0.06, top + 0.2), margin=0.04)
        patch = c.blur((c.gaussian(x, y, 0.045, 0.035) > 0.35).astype(np.float32), 0.01)
        ring_r = rng.uniform(0.018, 0.026)
        ring = c.blank()
        cv2.circle(ring, c.pt(x, y), c.px(ring_r), 1.0, c.thickness(0.008))
        cav = c.ellipse(x, y, ring_r * 0.75, ring_r * 0.75)
        img += 0.20 * patch + 0.22 * c.blur(ring, 0.002)
        img[cav] = np.minimum(img[cav], 0.12)
        return _box(x, y, 0.065, 0.055)
    if name == "Calcification":
        x, y = _sample_in(lung, rng, (top + 0.08, bottom - 0.08), margin=0.03)
        dots = c.blank()
        for _ in range(int(rng.integers(3, 6))):
            dx, dy = rng.uniform(-0.022, 0.022, size=2)
            cv2.circle(dots, c.pt(x + dx, y + dy), max(1, c.px(rng.uniform(0.005, 0.008))), 1.0, -1)
        img += 0.55 * c.blur(dots, 0.0015)
        return _box(x, y, 0.035, 0.035)
    if name == "Consolidation":
        x, y = _sample_in(lung, rng, (ly - 0.02, bottom - 0.06), margin=0.05)
        rx, ry = rng.uniform(0.06, 0.08), rng.uniform(0.05, 0.07)
        patch = c.blur((c.ellipse(x, y, rx, ry) & lung).astype(np.float32), 0.008)
        bron = c.blank()
        for _ in range(3):
            ang = rng.uniform(0, 2 * math.pi)
            p0 = (x - math.cos(ang) * rx * 0.6, y - math.sin(ang) * ry * 0.6)
            p1 = (x + math.cos(ang) * rx * 0.5, y + math.sin(ang) * ry * 0.5)
            cv2.line(bron, c.pt(*p0), c.pt(*p1), 1.0, c.thickness(0.006))
        img += 0.32 * patch - 0.2 * c.blur(bron, 0.002) * patch
        return _box(x, y, rx, ry)
    if name == "Atelectasis":
        x, y = _sample_in(lung, rng, (ly + 0.05, bottom - 0.07), margin=0.06)
        ang = rng.uniform(-0.35, 0.35)
        half = rng.uniform(0.06, 0.085)
        band = c.blank()
        p0 = c.pt(x - math.cos(ang) * half, y - math.sin(ang) * half)
        p1 = c.pt(x + math.cos(ang) * half, y + math.sin(ang) * half)
        cv2.line(band, p0, p1, 1.0, c.thickness(0.014))
        img += 0.34 * c.blur(band, 0.003) * lung
        return _box(x, y, half + 0.015, abs(math.sin(ang)) * half + 0.025)
    if name == "Pleural Effusion":
        level = bottom - rng.uniform(0.10, 0.15)
        lateral = np.abs(c.x - lx) / lrx
        meniscus = level - 0.07 * np.clip(lateral, 0, 1.2) ** 2 * np.sign((c.x - lx) * (1 if side == 1 else -1)).clip(
            0, 1
        )
        fluid = lung & (c.y > meniscus)
        img[fluid] = np.maximum(img[fluid], 0.47) if fluid.any() else img[fluid]
        markings[fluid] *= 0.2
        return _mask_box(fluid) if fluid.any() else None
    if name == "Pneumothorax":
        outward = -1 if side == 0 else 1
        depth = rng.uniform(0.03, 0.05)
        inner = c.ellipse(lx - outward * depth, ly + 0.02, lrx - depth, lry - depth * 1.2)
        crescent = lung & ~inner & (c.y < ly + lry * 0.55)
        if not crescent.any():
            return None
        markings[crescent] = 0.0
        img[crescent] -= 0.07
        line = c.blank()
        cv2.ellipse(
            line,
            c.pt(lx - outward * depth, ly + 0.02),
            (c.px(lrx - depth), c.px(lry - depth * 1.2)),
            0,
            180,
            360,
            1.0,
            c.thickness(0.004),
        )
        img += 0.22 * c.blur(line, 0.0015) * (crescent | lung) * (c.y < ly + lry * 0.55)
        return _mask_box(crescent)
    if name == "Pleural Thickening":
        if rng.random() < 0.5:  # apical cap
            cap = lung & (c.y < top + 0.07)
            band = cap & ~c.ellipse(lx, ly + 0.035, lrx, lry)
            mask = band | (cap & (c.y < top + 0.045))
        else:  # lateral wall band
            shrink = rng.uniform(0.02, 0.03)
            outward = -1 if side == 0 else 1
            mask = (
                lung
                & ~c.ellipse(lx - outward * shrink, ly, lrx - shrink * 0.6, lry + 0.2)
                & (c.y > ly - lry * 0.5)
                & (c.y < ly + lry * 0.45)
            )
        if not mask.any():
            return None
        img += 0.30 * c.blur(mask.astype(np.float32), 0.003)
        return _mask_box(mask)
    if name == "Fibrosis":
        net = c.blank()
        for lm, (fx, fy, frx, fry) in zip(lungs, (a.lung_r, a.lung_l)):
            for _ in range(45):
                x, y = _sample_in(lm, rng, (fy + 0.02, fy + fry - 0.04))
                ang = rng.uniform(0, math.pi)
                d = rng.uniform(0.015, 0.03)
                cv2.line(net, c.pt(x, y), c.pt(x + math.cos(ang) * d, y + math.sin(ang) * d), 1.0, c.thickness(0.003))
        img += 0.16 * c.blur(net, 0.0015) * (lungs[0] | lungs[1])
        return None
    if name == "Infiltration":
        haze = c.blank()
        for lm in lungs:
            for _ in range(int(rng.integers(3, 5))):
                x, y = _sample_in(lm, rng, margin=0.03)
                haze += c.gaussian(x, y, rng.uniform(0.025, 0.04), rng.uniform(0.025, 0.04))
        img += 0.15 * np.clip(haze, 0, 1.2) * (lungs[0] | lungs[1])
        return None
    if name == "Cardiomegaly":
        return None  # drawn with the anatomy; the box comes from there
    raise ValueError(f"unknown condition {name!r}")


def sample_labels(rng: np.random.Generator) -> np.ndarray:
    """About a quarter of phantoms are normal; the rest carry one to three conditions."""
    labels = np.zeros(len(LABELS), np.float32)
    if rng.random() < 0.25:
        return labels
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    labels[rng.choice(len(LABELS), size=k, replace=False)] = 1.0
    # Effusion and pneumothorax on the same film are drawn too, but rarely.
    return labels


def make_phantom(seed: int, index: int, size: int = 256, labels: np.ndarray | None = None) -> Phantom:
    """Render phantom ``index`` of the stream ``seed`` at ``size`` x ``size`` pixels.

    The same ``(seed, index)`` gives the same anatomy, findings and boxes at any size
    (small differences from rasterising at another resolution aside).
    """
    rng = np.random.default_rng([seed, index])
    if labels is None:
        labels = sample_labels(rng)
    c = _Canvas(size)
    a = _layout(rng)
    findings = [name for name, on in zip(LABELS, labels) if on]
    img, lung_r, lung_l, heart_box = _anatomy(c, a, "Cardiomegaly" in findings, rng)
    lungs = (lung_r, lung_l)
    markings = _vessels(c, a, rng) * (lung_r | lung_l)
    img += _ribs(c, a) * (c.ellipse(a.cx, 0.5, 0.45 * a.scale, 0.56 * a.scale))
    boxes: dict[str, Box] = {}
    for name in findings:
        box = _draw_condition(name, img, c, a, lungs, markings, rng)
        if name == "Cardiomegaly":
            box = heart_box
        if box is not None:
            boxes[name] = box
    img += markings
    img = c.blur(img, 0.0012)
    # Exposure: contrast, brightness, gamma, then quantum-ish noise.
    img = np.clip(img, 0.0, 1.0)
    img = img ** rng.uniform(0.8, 1.25)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.06)
    img += rng.normal(0.0, rng.uniform(0.004, 0.018), img.shape).astype(np.float32)
    return Phantom(np.clip(img, 0.0, 1.0).astype(np.float32), labels.astype(np.float32), boxes)
