"""The embedded benchmark: a generated, DomainNet-like set of glyph images (book chapter 1).

Every image shows one *character* (a symbol, letter or digit: the class) drawn in one of four
*domains* modelled on DomainNet / Office-Home:

- ``photo``: a shaded, textured glyph with a drop shadow on a cluttered coloured background;
- ``clipart``: a flat colour fill with a dark outline on a plain background;
- ``sketch``: pencil outline strokes (sometimes doubled or hatched) on paper;
- ``quickdraw``: thin, jittery black strokes with some segments dropped, on white.

The layout is the one real data uses, so one loader serves both::

    root/<domain>/<class>/<nnnn>.png
    root/manifest.json     (generator version, parameters, counts, checksum)

Glyphs are rendered with the TrueType fonts matplotlib ships (``matplotlib.get_data_path()``),
never with system fonts, so the data set is the same on any machine (for a given Pillow /
FreeType) and in Colab. Inside a class, images vary in font face, scale, rotation, translation,
stroke width and colour. Each image draws its own parameters from a random stream keyed by
``(seed, domain, class, index)``: the domains are sampled independently, so no image in one
domain is a restyled copy of an image in another (:func:`image_parameters` exposes the draws).
The class list is chosen so that a horizontal flip (a standard augmentation) never turns one
class into another: no ``b``/``d``, ``p``/``q``, left/right arrow or crescent pairs.

Reference: X. Peng et al., "Moment Matching for Multi-Source Domain Adaptation" (DomainNet),
ICCV 2019; H. Venkateswara et al., "Deep Hashing Network for Unsupervised Domain Adaptation"
(Office-Home), CVPR 2017.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ucdir_lite._progress import tqdm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GENERATOR_VERSION = "1"
DOMAINS = ("photo", "clipart", "sketch", "quickdraw")
MANIFEST = "manifest.json"
GAP_DOMAIN = "sketch"
"""The domain that the domain-gap knob (``domain_gap``) turns: the target of both default pairs."""

# (folder name, character). The first 30 are the default classes. No class is the mirror image
# of another, so horizontal flips are safe (tests/test_glyphs.py checks it on the renderings).
CLASSES: tuple[tuple[str, str], ...] = (
    ("sym_heart", "\u2665"), ("sym_spade", "\u2660"), ("sym_club", "\u2663"),
    ("sym_diamond", "\u2666"), ("sym_star", "\u2605"), ("sym_sun", "\u2600"),
    ("sym_umbrella", "\u2602"), ("sym_phone", "\u260e"), ("sym_note", "\u266a"),
    ("sym_anchor", "\u2693"), ("sym_lightning", "\u26a1"), ("sym_plane", "\u2708"),
    ("sym_scissors", "\u2702"), ("sym_envelope", "\u2709"), ("sym_check", "\u2714"),
    ("sym_plus", "\u271a"), ("sym_snowflake", "\u2744"), ("sym_cloud", "\u2601"),
    ("sym_flag", "\u2691"), ("sym_knight", "\u265e"), ("sym_crown", "\u265b"),
    ("sym_gear", "\u2699"), ("sym_infinity", "\u221e"), ("letter_A", "A"),
    ("letter_G", "G"), ("letter_K", "K"), ("letter_R", "R"),
    ("digit_2", "2"), ("digit_4", "4"), ("digit_7", "7"),
    # extra classes: num_classes > 30
    ("sym_rook", "\u265c"), ("sym_recycle", "\u267b"), ("sym_house", "\u2302"),
    ("sym_arrow_up", "\u2191"), ("sym_female", "\u2640"), ("sym_male", "\u2642"),
    ("sym_flower", "\u273f"), ("sym_yin_yang", "\u262f"), ("sym_peace", "\u262e"),
    ("sym_smiley", "\u263a"), ("sym_notes", "\u266b"), ("sym_pencil", "\u270e"),
    ("sym_skull", "\u2620"), ("sym_square", "\u25a0"), ("sym_triangle", "\u25b2"),
    ("sym_moon", "\u263e"), ("greek_omega", "\u03a9"), ("greek_pi", "\u03c0"),
    ("greek_lambda", "\u03bb"), ("sym_euro", "\u20ac"), ("sym_dollar", "$"),
    ("sym_ampersand", "&"), ("sym_at", "@"), ("sym_hash", "#"),
    ("sym_percent", "%"), ("sym_question", "?"), ("letter_M", "M"),
    ("letter_Q", "Q"), ("digit_5", "5"), ("digit_8", "8"),
)
MAX_CLASSES = len(CLASSES)
CHARS = dict(CLASSES)

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)
# The Computer Modern fonts map non-ASCII code points to other glyphs ('§' draws a Sigma).
ASCII_ONLY_FONTS = frozenset(f for f in FONTS if f.startswith("cm"))

_MASTER_SIZE = 160  # font size (px) of the cached master rendering of each glyph


# --------------------------------------------------------------------------------------------
# fonts and missing-glyph detection
# --------------------------------------------------------------------------------------------
def font_path(font: str) -> Path:
    """Path of one of matplotlib's shipped fonts, e.g. ``font_path("DejaVuSans.ttf")``."""
    path = FONT_DIR / font
    if not path.is_file():
        raise FileNotFoundError(
            f"font {font!r} not found in matplotlib's font folder {FONT_DIR}; "
            f"use one of {FONTS}"
        )
    return path


@cache
def _charmap(font: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(str(font_path(font))).get_charmap())


@cache
def _truetype(font: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(font)), size)


def _render_master(font: str, char: str) -> Image.Image:
    """Render ``char`` white on black at the master size, cropped to its ink (may be empty)."""
    size = _MASTER_SIZE
    canvas = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(canvas).text(
        (1.5 * size, 1.5 * size), char, font=_truetype(font, size), fill=255, anchor="mm"
    )
    box = canvas.getbbox()
    return canvas.crop(box) if box else Image.new("L", (0, 0), 0)


def renders_as_notdef(font: str, char: str) -> bool:
    """True when ``font`` draws ``char`` as nothing or as its missing-glyph (.notdef) box.

    Compares the rendering of ``char`` with that of U+FFFF (a non-character no font maps),
    which FreeType draws with the font's .notdef glyph. This ignores the character map, so it
    catches fonts whose cmap points at an empty or placeholder glyph.
    """
    master = _render_master(font, char)
    if master.width == 0:
        return True
    notdef = _render_master(font, "\uffff")
    return master.size == notdef.size and np.array_equal(np.asarray(master), np.asarray(notdef))


def font_has_glyph(font: str, char: str) -> bool:
    """True when the shipped ``font`` really draws ``char``.

    Three checks: the ``cm*10`` fonts are used for printable ASCII only (their character map
    is not Unicode); the font's character map (read with matplotlib's ``FT2Font``) must map
    the code point; the rendering must not be empty or the .notdef box
    (:func:`renders_as_notdef`).
    """
    if len(char) != 1:
        raise ValueError(f"char must be a single character, got {char!r}")
    if font in ASCII_ONLY_FONTS and not ("!" <= char <= "~"):
        return False
    if ord(char) not in _charmap(font):
        return False
    return not renders_as_notdef(font, char)


@cache
def fonts_for(char: str) -> tuple[str, ...]:
    """The shipped fonts (file names from :data:`FONTS`) that draw ``char``."""
    return tuple(f for f in FONTS if font_has_glyph(f, char))


def class_names(num_classes: int = 30) -> list[str]:
    """The first ``num_classes`` class folder names of the benchmark (catalogue order)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be between 2 and {MAX_CLASSES} (the size of the glyph class "
            f"list), got {num_classes}"
        )
    return [name for name, _ in CLASSES[:num_classes]]


# --------------------------------------------------------------------------------------------
# per-image parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlyphParams:
    """The geometry of one image: which source sample it is, before the domain's style.

    ``scale`` is the glyph's longer side as a fraction of the image, ``angle`` the rotation in
    degrees, ``shift`` the translation as a fraction of the free room on each axis (in
    [-1, 1]), ``stroke`` the stroke change in pixels at 64 px (negative: thinner).
    """

    domain: str
    class_name: str
    index: int
    char: str
    font: str
    scale: float
    angle: float
    shift: tuple[float, float]
    stroke: int


def _stable_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _image_rng(seed: int, domain: str, class_name: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, domain, class, index): subsets of a benchmark agree."""
    return np.random.default_rng([seed, _stable_id(domain), _stable_id(class_name), index])


def _draw_params(
    rng: np.random.Generator, domain: str, class_name: str, index: int
) -> GlyphParams:
    char = CHARS[class_name]
    fonts = fonts_for(char)
    if not fonts:
        raise ValueError(f"no shipped font draws {char!r} (class {class_name!r})")
    return GlyphParams(
        domain=domain,
        class_name=class_name,
        index=index,
        char=char,
        font=fonts[int(rng.integers(len(fonts)))],
        scale=float(rng.uniform(0.55, 0.85)),
        angle=float(rng.uniform(-20.0, 20.0)),
        shift=(float(rng.uniform(-1.0, 1.0)), float(rng.uniform(-1.0, 1.0))),
        stroke=int(rng.choice([-1, 0, 0, 1, 2])),
    )


def _check_domain_and_class(domain: str, class_name: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; the generator draws {DOMAINS}")
    if class_name not in CHARS:
        raise ValueError(
            f"unknown glyph class {class_name!r}; see ucdir_lite.glyphs.CLASSES "
            f"({MAX_CLASSES} classes)"
        )


def image_parameters(domain: str, class_name: str, index: int, seed: int = 0,
                     domain_gap: float = 0.0) -> GlyphParams:
    """The font, scale, rotation, shift and stroke of image ``index`` of a class in a domain.

    These are the first draws of the image's own random stream, so they are exactly what
    :func:`render_image` and :func:`generate_benchmark` use (``domain_gap``: see
    :func:`with_gap`).
    """
    _check_domain_and_class(domain, class_name)
    params = _draw_params(_image_rng(seed, domain, class_name, index), domain, class_name, index)
    return with_gap(params, domain_gap)


def with_gap(params: GlyphParams, domain_gap: float) -> GlyphParams:
    """The domain-gap knob: in :data:`GAP_DOMAIN` every glyph is turned ``domain_gap`` more
    degrees (counter-clockwise), on top of its own random tilt; other domains are unchanged.

    Turning the content of one domain moves its features away from the other domain's (a
    CNN's features are not rotation invariant, and no augmentation rotates) while each domain
    keeps its own structure: the same glyphs, the same style, the same within-class variety.
    Chosen by measurement among seven candidates (``bench/gap_candidates.py``; book chapter 7).
    The style's random draws do not depend on it, so ``domain_gap=0`` is the default benchmark.
    """
    if domain_gap == 0 or params.domain != GAP_DOMAIN:
        return params
    return replace(params, angle=params.angle + float(domain_gap))


# --------------------------------------------------------------------------------------------
# rendering: a glyph mask, then a domain style
# --------------------------------------------------------------------------------------------
def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    return ndimage.grey_dilation(m, size=(2 * k + 1, 2 * k + 1)) if k > 0 else m


def _erode(m: np.ndarray, k: int) -> np.ndarray:
    return ndimage.grey_erosion(m, size=(2 * k + 1, 2 * k + 1)) if k > 0 else m


@cache
def _master(font: str, char: str) -> Image.Image:
    return _render_master(font, char)


def _glyph_mask(params: GlyphParams, size: int) -> np.ndarray:
    """Anti-aliased mask in [0, 1], (size, size): the glyph scaled, rotated, shifted, re-stroked."""
    master = _master(params.font, params.char)
    side = params.scale * size / max(master.size)
    glyph = master.resize(
        (max(1, round(master.width * side)), max(1, round(master.height * side))),
        Image.Resampling.LANCZOS,
    )
    glyph = glyph.rotate(params.angle, resample=Image.Resampling.BICUBIC, expand=True)
    # centred, then shifted by up to 80 % of the free room on each side
    x = (size - glyph.width) / 2 + 0.4 * params.shift[0] * max(0, size - glyph.width)
    y = (size - glyph.height) / 2 + 0.4 * params.shift[1] * max(0, size - glyph.height)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(glyph, (round(x), round(y)))
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    k = round(abs(params.stroke) * size / 64)
    if params.stroke > 0:
        mask = _dilate(mask, k)
    elif params.stroke < 0:
        thinner = _erode(mask, k)
        if thinner.sum() > 0.5 * mask.sum():  # keep thin glyphs readable
            mask = thinner
    return mask


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in about [0, 1]: a (cells x cells) grid upsampled to (size, size)."""
    grid = rng.random((channels, cells, cells)).astype(np.float32)
    up = [np.asarray(Image.fromarray(g, "F").resize((size, size), Image.Resampling.BICUBIC))
          for g in grid]
    return np.clip(np.stack(up, axis=-1), 0.0, 1.0)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) as an RGB float array."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _with_luma(rgb: np.ndarray, target: float) -> np.ndarray:
    """The colour ``rgb`` darkened (scaled) or lightened (blended with white) to luma ``target``."""
    target = float(np.clip(target, 0.04, 0.96))
    luma = float(_luma(rgb))
    if target <= luma:
        return rgb * (target / max(luma, 1e-6))
    return rgb + (1.0 - rgb) * (target - luma) / max(1.0 - luma, 1e-6)


def _mix(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return base * (1.0 - a) + colour * a


def _style_photo(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shaded, textured glyph with a soft shadow on a moderately cluttered coloured scene."""
    size = mask.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a two-colour gradient, blotchy colour noise and a few blurred shapes
    c1 = _hsv(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.95))
    c2 = _hsv(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.95))
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta), 0, 1)
    bg = _mix(np.broadcast_to(c1, (size, size, 3)), c2, ramp)
    bg = 0.75 * bg + 0.25 * _smooth_noise(rng, size, 4, 3)
    for _ in range(int(rng.integers(2, 5))):
        shape = Image.new("L", (size, size), 0)
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.15, 0.5, 2) * size
        draw = ImageDraw.Draw(shape)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=255)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=255)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=255, width=max(1, round(size / 16)))
        alpha = ndimage.gaussian_filter(np.asarray(shape, np.float32) / 255, size / 64)
        bg = _mix(bg, _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0)),
                  alpha * rng.uniform(0.3, 0.6))
    bg = bg + rng.normal(0, 0.03, bg.shape).astype(np.float32)
    # glyph colour contrasting with the background around it, lit from one side, textured
    ring = _dilate(mask, max(1, size // 16)) > 0.1
    bg_luma = float(_luma(bg)[ring].mean()) if ring.any() else 0.5
    # soft drop shadow
    offset = max(1, round(size / 32))
    shadow = ndimage.gaussian_filter(np.roll(mask, (offset, offset), axis=(0, 1)), size / 40)
    bg = bg * (1.0 - 0.5 * shadow[..., None])
    gap = rng.uniform(0.3, 0.5)
    target = bg_luma - gap if bg_luma > 0.5 else bg_luma + gap
    base = _with_luma(_hsv(rng.random(), rng.uniform(0.3, 1.0), 1.0), target)
    phi = rng.uniform(0, 2 * np.pi)
    light = 1.0 + 0.35 * ((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi))
    texture = 0.9 + 0.2 * _smooth_noise(rng, size, 8, 1)[..., 0]
    glyph = np.clip(base * (light * texture)[..., None], 0, 1)
    img = _mix(bg, glyph, mask)
    img = ndimage.gaussian_filter(img, (size / 128, size / 128, 0))  # a little lens blur
    return img


def _style_clipart(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat colour fill, a dark outline and sometimes a lighter tone, on a plain background."""
    size = mask.shape[0]
    if rng.random() < 0.6:
        paper = np.ones(3, np.float32)
    else:
        paper = _hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.92, 1.0))
    hue = rng.random()
    fill = _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0))
    if rng.random() < 0.7:
        ink = np.full(3, rng.uniform(0.0, 0.15), np.float32)
    else:
        ink = fill * 0.3
    width = int(rng.integers(1, 3)) * max(1, size // 64) + 1
    img = np.broadcast_to(paper, (size, size, 3)).astype(np.float32)
    img = _mix(img, ink, _dilate(mask, width))
    img = _mix(img, fill, mask)
    if rng.random() < 0.4:  # two-tone cel shading on one side of the glyph
        yy, xx = np.mgrid[0:size, 0:size] / size
        phi = rng.uniform(0, 2 * np.pi)
        side = ((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)) > rng.uniform(-0.1, 0.2)
        tone = np.clip(fill * 0.6 + 0.4, 0, 1)
        img = _mix(img, tone, _erode(mask, width) * side)
    return img


def _style_sketch(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pencil outline strokes with uneven pressure, sometimes doubled or hatched, on paper."""
    size = mask.shape[0]
    paper = np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.88, 1.0)], np.float32)
    paper = paper * rng.uniform(0.92, 1.0)
    width = max(1, round(size / 64 * rng.uniform(1.0, 2.0)))
    outline = np.clip(_dilate(mask, width) - _erode(mask, max(1, size // 64)), 0, 1)
    if rng.random() < 0.5:  # a second, offset stroke: sketchy double line
        dy, dx = rng.integers(-1, 2, 2) * max(1, size // 64)
        outline = np.maximum(outline, 0.6 * np.roll(outline, (dy, dx), axis=(0, 1)))
    pressure = 0.6 + 0.4 * _smooth_noise(rng, size, 3, 1)[..., 0]
    ink = outline * pressure
    if rng.random() < 0.35:  # light hatching inside the shape
        yy, xx = np.mgrid[0:size, 0:size]
        phi = np.deg2rad(rng.uniform(30, 60))
        period = size / rng.uniform(8, 12)
        lines = (np.mod(xx * np.cos(phi) + yy * np.sin(phi), period) < period / 3)
        ink = np.maximum(ink, 0.35 * lines * _erode(mask, width))
    graphite = np.full(3, rng.uniform(0.05, 0.3), np.float32)
    img = _mix(np.broadcast_to(paper, (size, size, 3)).astype(np.float32), graphite, ink)
    return img + rng.normal(0, 0.015, img.shape).astype(np.float32)  # paper grain


def _style_quickdraw(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A quick doodle: a simplified, wobbly outline in thin black strokes, gaps included."""
    size = mask.shape[0]
    # simplify (round off details), then wobble the shape with a smooth displacement field
    simple = (ndimage.gaussian_filter(mask, size / 64) > 0.5).astype(np.float32)
    amp = rng.uniform(1.5, 3.0) * size / 64
    disp = (_smooth_noise(rng, size, 4, 2) - 0.5) * 2 * amp
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wobbly = ndimage.map_coordinates(simple, [yy + disp[..., 0], xx + disp[..., 1]], order=1)
    k = max(1, size // 64)
    stroke = (np.clip(_dilate(wobbly, k) - _erode(wobbly, k - 1 if k > 1 else 0), 0, 1) > 0.5)
    # drop a few segments of the pen stroke
    ys, xs = np.nonzero(stroke)
    for _ in range(int(rng.integers(1, 4)) if len(ys) else 0):
        j = int(rng.integers(len(ys)))
        r = rng.uniform(2.5, 6.0) * size / 64
        stroke &= (yy - ys[j]) ** 2 + (xx - xs[j]) ** 2 > r * r
    return np.broadcast_to(1.0 - stroke[..., None].astype(np.float32), (size, size, 3))


_STYLES = {
    "photo": _style_photo,
    "clipart": _style_clipart,
    "sketch": _style_sketch,
    "quickdraw": _style_quickdraw,
}


def render_image(
    domain: str, class_name: str, index: int, *, seed: int = 0, image_size: int = 32,
    domain_gap: float = 0.0,
) -> Image.Image:
    """Image ``index`` of class ``class_name`` in ``domain``: an RGB PIL image.

    Drawn at twice ``image_size`` and downsampled (2x2 box filter) for anti-aliasing. The
    same arguments always give the same pixels. ``domain_gap`` turns the glyphs of
    :data:`GAP_DOMAIN` by that many degrees (:func:`with_gap`).
    """
    _check_domain_and_class(domain, class_name)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    rng = _image_rng(seed, domain, class_name, index)
    params = with_gap(_draw_params(rng, domain, class_name, index), domain_gap)
    mask = _glyph_mask(params, 2 * image_size)
    rgb = _STYLES[domain](mask, rng)
    big = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    return big.reduce(2)


# --------------------------------------------------------------------------------------------
# the benchmark on disk
# --------------------------------------------------------------------------------------------
def _params_dict(num_classes, images_per_class, domains, image_size, seed, imbalance,
                 domain_gap=0.0) -> dict:
    params = {
        "num_classes": int(num_classes),
        "images_per_class": int(images_per_class),
        "domains": list(domains),
        "image_size": int(image_size),
        "seed": int(seed),
        "imbalance": float(imbalance),
    }
    if domain_gap:  # recorded only when set: the default benchmark's manifest stays as it was
        params["domain_gap"] = float(domain_gap)
    return params


def _validate(params: dict) -> None:
    class_names(params["num_classes"])  # range check
    if params["images_per_class"] < 1:
        raise ValueError(f"images_per_class must be >= 1, got {params['images_per_class']}")
    bad = [d for d in params["domains"] if d not in DOMAINS]
    if bad or not params["domains"] or len(set(params["domains"])) != len(params["domains"]):
        raise ValueError(
            f"domains must be distinct names from {DOMAINS}, got {tuple(params['domains'])}"
        )
    if params["image_size"] < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {params['image_size']}")
    if not 0.0 <= params["imbalance"] < 1.0:
        raise ValueError(
            f"imbalance must be in [0, 1) (0 = balanced), got {params['imbalance']}"
        )
    gap = params.get("domain_gap", 0.0)
    if not 0.0 <= gap < 360.0:
        raise ValueError(f"domain_gap must be an angle in degrees in [0, 360), got {gap}")
    if gap and GAP_DOMAIN not in params["domains"]:
        raise ValueError(
            f"domain_gap={gap} turns the {GAP_DOMAIN!r} domain, which is not among the domains "
            f"{tuple(params['domains'])}; add it or leave domain_gap at 0"
        )


def class_counts(num_classes: int, images_per_class: int, imbalance: float = 0.0) -> list[int]:
    """Images per class: a geometric decay from ``images_per_class`` (class 0) to
    ``(1 - imbalance) * images_per_class`` (last class), at least 1; ``imbalance=0`` is balanced.

    :math:`n_c = \\mathrm{round}(N (1-\\rho)^{c/(C-1)})` with :math:`N` = ``images_per_class``,
    :math:`\\rho` = ``imbalance``, :math:`C` = ``num_classes``; the same in every domain.
    """
    if not 0.0 <= imbalance < 1.0:
        raise ValueError(f"imbalance must be in [0, 1) (0 = balanced), got {imbalance}")
    steps = max(1, num_classes - 1)
    return [max(1, round(images_per_class * (1.0 - imbalance) ** (c / steps)))
            for c in range(num_classes)]


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _is_ours(manifest: dict | None) -> bool:
    return isinstance(manifest, dict) and manifest.get("generator") == "ucdir_lite.glyphs"


def _matches(manifest: dict | None, params: dict) -> bool:
    return (
        _is_ours(manifest)
        and manifest.get("generator_version") == GENERATOR_VERSION
        and manifest.get("params") == params
    )


def _write_class(task: tuple) -> list[tuple[str, str]]:
    """Render and write one (domain, class) folder; returns (relative path, sha256) pairs."""
    out_root, domain, class_name, count, seed, image_size, domain_gap = task
    folder = Path(out_root) / domain / class_name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        buf = io.BytesIO()
        img = render_image(domain, class_name, i, seed=seed, image_size=image_size,
                           domain_gap=domain_gap)
        img.save(buf, format="PNG", optimize=False, compress_level=6)
        data = buf.getvalue()
        rel = f"{domain}/{class_name}/{i:04d}.png"
        (folder / f"{i:04d}.png").write_bytes(data)
        written.append((rel, hashlib.sha256(data).hexdigest()))
    return written


def _default_workers(n_images: int) -> int:
    if n_images < 1000 or "fork" not in mp.get_all_start_methods() or os.name != "posix":
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _up_to_date(root: Path, params: dict, overwrite: bool) -> bool:
    """True if ``root`` already holds this benchmark; raises if ``root`` may not be replaced."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose another root")
    existing = _read_manifest(root)
    if _matches(existing, params) and not overwrite:
        return True
    if not _is_ours(existing) and any(root.iterdir()):
        raise ValueError(
            f"{root} is not empty and is not a ucdir-lite glyph benchmark (no "
            f"{MANIFEST} from this generator); choose a new or empty folder"
        )
    if _is_ours(existing) and not overwrite:
        raise ValueError(
            f"{root} holds a glyph benchmark made with other parameters "
            f"({existing.get('params')}, generator v{existing.get('generator_version')}); "
            f"pass overwrite=True (CLI: --overwrite) to replace it, or choose another root"
        )
    return False


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> list[tuple[str, str]]:
    """Run :func:`_write_class` on every task (in ``workers`` forked processes if > 1)."""
    files: list[tuple[str, str]] = []
    n_images = sum(t[3] for t in tasks)
    with tqdm(total=n_images, disable=not progress, desc="glyphs", unit="img") as bar:
        if workers <= 1:
            results = map(_write_class, tasks)
            for task, written in zip(tasks, results, strict=True):
                files += written
                bar.update(task[3])
        else:
            ctx = mp.get_context("fork")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for task, written in zip(tasks, pool.map(_write_class, tasks), strict=True):
                    files += written
                    bar.update(task[3])
    return sorted(files)


def generate_benchmark(
    root: str | os.PathLike,
    *,
    num_classes: int = 30,
    images_per_class: int = 60,
    domains: tuple[str, ...] | list[str] = DOMAINS,
    image_size: int = 32,
    seed: int = 0,
    imbalance: float = 0.0,
    domain_gap: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate the glyph benchmark into ``root`` and return ``root`` (book chapter 1).

    Writes ``root/<domain>/<class>/<nnnn>.png`` and ``root/manifest.json``. Everything is first
    written to a hidden temporary sibling folder that is renamed into place at the end, so an
    interrupted run leaves nothing half-written. Same arguments, same bytes.

    Args:
        root: destination folder (created; must be new, empty, or an earlier benchmark).
        num_classes: number of classes, 2 to :data:`MAX_CLASSES` (first ones of :data:`CLASSES`).
        images_per_class: images of the largest class per domain.
        domains: names from :data:`DOMAINS`.
        image_size: side in pixels (rendered at twice the size and downsampled).
        seed: the random seed; each (domain, class, image) has its own stream from it.
        imbalance: 0 = balanced; otherwise class counts decay geometrically
            (:func:`class_counts`).
        domain_gap: degrees by which every glyph of :data:`GAP_DOMAIN` is turned
            (:func:`with_gap`; 0 = the default benchmark, byte for byte).
        overwrite: replace an existing benchmark made with other parameters (a folder that is
            not a glyph benchmark is never replaced).
        progress: show a tqdm progress bar.
        workers: processes (forked; default: 2 on Linux for >= 1000 images, else 1). The
            bytes do not depend on it.
    """
    root = Path(root).expanduser()
    params = _params_dict(num_classes, images_per_class, domains, image_size, seed, imbalance,
                          domain_gap)
    _validate(params)
    if _up_to_date(root, params, overwrite):
        return root

    names = class_names(num_classes)
    counts = class_counts(num_classes, images_per_class, imbalance)
    for name in names:  # fail early, in this process, on a glyph no shipped font draws
        if not fonts_for(CHARS[name]):
            raise ValueError(f"no shipped font draws {CHARS[name]!r} (class {name!r})")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    tasks = [(str(tmp), d, c, n, seed, image_size, float(domain_gap))
             for d in domains for c, n in zip(names, counts, strict=True)]
    if workers is None:
        workers = _default_workers(sum(t[3] for t in tasks))
    try:
        tmp.mkdir()
        files = _run_tasks(tasks, workers, progress)
        listing = "".join(f"{rel}\t{digest}\n" for rel, digest in files)
        manifest = {
            "generator": "ucdir_lite.glyphs",
            "generator_version": GENERATOR_VERSION,
            "params": params,
            "classes": {name: CHARS[name] for name in names},
            "counts": {d: dict(zip(names, counts, strict=True)) for d in domains},
            "num_images": len(files),
            "files_sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
            "layout": "<domain>/<class>/<nnnn>.png",
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        if overwrite or not _matches(_read_manifest(root), params):  # not made meanwhile
            _swap_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an old ``root`` is moved aside first and then deleted."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        root.rename(old)
    try:
        tmp.rename(root)
    except BaseException:
        if old is not None:
            old.rename(root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a generated benchmark (``FileNotFoundError`` when there is none)."""
    path = Path(root).expanduser() / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a generated glyph benchmark; run "
            f"`ucdir-lite data generate` or ucdir_lite.glyphs.ensure_benchmark()"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def default_root(**params) -> Path:
    """``$UCDIR_DATA/glyphs-v<version>-<hash>`` (or under ``~/.cache/ucdir_lite``).

    The 8-character hash is taken over the generation parameters (the same keywords as
    :func:`generate_benchmark`), so different settings get different folders.
    """
    p = _params_from_kwargs(**params)
    key = json.dumps(p, sort_keys=True).encode("utf-8")
    short = hashlib.sha256(key).hexdigest()[:8]
    base = os.environ.get("UCDIR_DATA") or Path("~/.cache/ucdir_lite").expanduser()
    return Path(base).expanduser() / f"glyphs-v{GENERATOR_VERSION}-{short}"


def _params_from_kwargs(
    *, num_classes=30, images_per_class=60, domains=DOMAINS, image_size=32, seed=0, imbalance=0.0,
    domain_gap=0.0,
) -> dict:
    p = _params_dict(num_classes, images_per_class, domains, image_size, seed, imbalance,
                     domain_gap)
    _validate(p)
    return p


def ensure_benchmark(
    root: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    workers: int | None = None,
    **params,
) -> Path:
    """Return the root of a generated benchmark with these parameters, generating it if needed.

    ``params`` are :func:`generate_benchmark`'s (``num_classes``, ``images_per_class``,
    ``domains``, ``image_size``, ``seed``, ``imbalance``, ``domain_gap``). With ``root=None``
    the folder is :func:`default_root` (``$UCDIR_DATA`` is the parent folder of the cache). If
    ``root/manifest.json`` records the same generator version and parameters this returns at
    once; if it records others the benchmark is regenerated in place; a non-empty folder that
    is not a glyph benchmark is an error.
    """
    p = _params_from_kwargs(**params)
    root = default_root(**params) if root is None else Path(root).expanduser()
    existing = _read_manifest(root)
    if _matches(existing, p):
        return root
    return generate_benchmark(
        root, **params, overwrite=_is_ours(existing), progress=progress, workers=workers
    )


# --------------------------------------------------------------------------------------------
# a picture of the data
# --------------------------------------------------------------------------------------------
def contact_sheet(
    root: str | os.PathLike,
    domains: list[str] | tuple[str, ...] | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    n_classes: int = 10,
    *,
    index: int = 0,
    cell_inches: float = 0.72,
    title: str | None = None,
) -> Figure:
    """A grid of example images: one row per domain, one column per class, labelled.

    Works for any ``root/<domain>/<class>/<image>`` tree (generated or real data). By default
    the domains are those of the manifest (or every folder under ``root``) and the columns are
    ``n_classes`` classes spread evenly over the classes the domains share; ``index`` picks
    which image of each class (in file-name order) is shown.
    """
    from matplotlib.figure import Figure

    from .datasets import IMG_EXTENSIONS, common_classes

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist; run `ucdir-lite data generate` or check the path"
        )
    if domains is None:
        manifest = _read_manifest(root)
        if _is_ours(manifest):
            domains = manifest["params"]["domains"]
        else:
            domains = sorted(p.name for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
    domains = list(domains)
    if not domains:
        raise ValueError(f"no domain folders under {root}")
    if classes is None:
        shared = common_classes(root, domains)
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        picks = np.linspace(0, len(shared) - 1, min(n_classes, len(shared)))
        classes = [shared[round(j)] for j in picks]
    classes = list(classes)

    fig = Figure(figsize=(cell_inches * len(classes) + 0.8, cell_inches * len(domains) + 0.5),
                 layout="constrained")
    axes = fig.subplots(len(domains), len(classes), squeeze=False)
    for r, domain in enumerate(domains):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            files = sorted(p for p in (root / domain / name).iterdir()
                           if p.suffix.lower() in IMG_EXTENSIONS) \
                if (root / domain / name).is_dir() else []
            if files:
                with Image.open(files[index % len(files)]) as img:
                    ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("_", "\n", 1), fontsize=9)
            if c == 0:
                ax.set_ylabel(domain, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


__all__ = [
    "CLASSES",
    "DOMAINS",
    "FONTS",
    "GENERATOR_VERSION",
    "MAX_CLASSES",
    "GlyphParams",
    "class_counts",
    "class_names",
    "contact_sheet",
    "default_root",
    "ensure_benchmark",
    "font_has_glyph",
    "fonts_for",
    "generate_benchmark",
    "image_parameters",
    "read_manifest",
    "render_image",
    "renders_as_notdef",
]
