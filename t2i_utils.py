"""Support module for the tf-text2image notebooks.

Everything reusable lives here; the notebooks show the ideas and call these functions.
Sections follow the notebook order, and every docstring names the notebook that introduces it:

1. The text grammar (chars and spec), parsing and encoders ........ 01_data_synthesis
2. Rendering: the matplotlib reference and the fast coloured-mask path  01_data_synthesis
3. Sampling, levels, the held-out rule, kerned pairs, tf.data ..... 01_data_synthesis
4. The loss made for tanh ........................................... 00_tanh_loss
5. Symbolic checks used to audit the loss derivation ................ 00_tanh_loss
6. The generator: model, training, checkpoints ...................... 02_train_generator
7. Using and evaluating the generator ............................... 02_train_generator
8. The interactive widget ........................................... 02_train_generator
9. The discriminator: fakes, model, training, evaluation ............ 03_train_discriminator
10. Command line .................................................... 02_train_generator

Bad input (chars or spec) is rejected by plain Python checks with a message that names the
offending token, before any TensorFlow op runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import io
import itertools
import json
import os
import shutil
import sys
import threading
import time
import zlib
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

import keras  # noqa: E402
import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties, get_font  # noqa: E402
from matplotlib.ft2font import Kerning, RenderMode  # noqa: E402

# =====================================================================================
# 1. The text grammar                                        (Introduced in 01_data_synthesis)
# =====================================================================================

#: The characters `chars` may contain: digits, lower case, upper case (62 in all).
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The most characters one image holds.
MAX_CHARS = 3
#: Matplotlib's named colours (note: 'green' is (0, 0.5, 0), not (0, 1, 0)).
COLORS = ("blue", "green", "red", "cyan", "magenta", "yellow", "black", "white")
FONT_FAMILIES = ("sans-serif", "serif", "monospace")
FONT_WEIGHTS = ("normal", "bold")
FONT_STYLES = ("normal", "italic")

#: The spec keys in their canonical order, with the values each allows.
SPEC_VALUES = {
    "color": COLORS,
    "backgroundcolor": COLORS,
    "fontfamily": FONT_FAMILIES,
    "fontweight": FONT_WEIGHTS,
    "fontstyle": FONT_STYLES,
}
SPEC_KEYS = tuple(SPEC_VALUES)
#: Values taken by keys that a spec leaves out.
SPEC_DEFAULTS = {
    "color": "black",
    "backgroundcolor": "white",
    "fontfamily": "sans-serif",
    "fontweight": "normal",
    "fontstyle": "normal",
}
#: The 12 (family, weight, style) combinations, in a fixed order.
FONTS = tuple(itertools.product(FONT_FAMILIES, FONT_WEIGHTS, FONT_STYLES))

_SPEC_EXAMPLE = "color red, backgroundcolor blue, fontfamily serif"


def validate_chars(chars) -> str:
    """Return `chars` unchanged if it is 1..MAX_CHARS characters of ALPHABET, else raise.

    Raises TypeError for a non-string and ValueError naming the offending character (and its
    position) otherwise. Introduced in 01_data_synthesis.
    """
    if not isinstance(chars, str):
        raise TypeError(f"chars must be a str, got {type(chars).__name__} {chars!r}")
    if len(chars) == 0:
        raise ValueError(f"chars is empty: give 1 to {MAX_CHARS} characters from 0-9, a-z, A-Z")
    if len(chars) > MAX_CHARS:
        raise ValueError(
            f"chars {chars!r} has {len(chars)} characters: at most {MAX_CHARS} are allowed"
        )
    for i, c in enumerate(chars):
        if c not in ALPHABET:
            what = "whitespace" if c.isspace() else f"U+{ord(c):04X}"
            raise ValueError(
                f"chars {chars!r}: character {c!r} ({what}) at position {i} is not allowed; "
                "allowed are the 62 characters 0-9, a-z, A-Z"
            )
    return chars


def parse_spec(spec) -> dict:
    """Parse a spec such as ``"color red, backgroundcolor blue"`` into its canonical dict.

    A spec is comma-separated ``key value`` pairs in any order, case-insensitive, each key at
    most once; keys left out take SPEC_DEFAULTS. The result has every key of SPEC_KEYS, in that
    order. The empty spec means all defaults. Text and background colour must differ (the text
    would be invisible). Raises TypeError/ValueError naming the offending token and what is
    allowed. Introduced in 01_data_synthesis.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__} {spec!r}")
    result = dict(SPEC_DEFAULTS)
    if spec.strip() == "":
        return result
    for i, c in enumerate(spec):
        if not (c.isalnum() or c.isspace() or c in "-,"):
            raise ValueError(
                f"spec {spec!r}: character {c!r} at position {i} is not allowed; a spec is "
                f"'key value' pairs separated by commas, e.g. {_SPEC_EXAMPLE!r}"
            )
    seen = set()
    for n, pair in enumerate(spec.split(","), start=1):
        words = pair.split()
        if len(words) != 2:
            problem = "is empty" if not words else f"{pair.strip()!r} is not a 'key value' pair"
            raise ValueError(
                f"spec {spec!r}: pair {n} {problem}; write 'key value' pairs separated by "
                f"commas, e.g. {_SPEC_EXAMPLE!r}"
            )
        key, value = words[0].lower(), words[1].lower()
        if key not in SPEC_VALUES:
            raise ValueError(
                f"spec {spec!r}: unknown key {words[0]!r}; allowed keys: {', '.join(SPEC_KEYS)}"
            )
        if key in seen:
            raise ValueError(f"spec {spec!r}: key {key!r} is given more than once")
        if value not in SPEC_VALUES[key]:
            raise ValueError(
                f"spec {spec!r}: unknown value {words[1]!r} for {key!r}; "
                f"allowed: {', '.join(SPEC_VALUES[key])}"
            )
        seen.add(key)
        result[key] = value
    if result["color"] == result["backgroundcolor"]:
        raise ValueError(
            f"spec {spec!r}: color and backgroundcolor are both {result['color']!r}, "
            "so the text would be invisible; choose two different colours"
        )
    return result


def as_spec(spec) -> dict:
    """A spec as its canonical dict: text is parsed with `parse_spec`; a dict must already be
    canonical (every key of SPEC_KEYS with an allowed value) and is returned as is. Anything else
    raises the same clear TypeError/ValueError as `parse_spec`. Introduced in 01_data_synthesis.
    """
    if isinstance(spec, dict):
        if set(spec) != set(SPEC_KEYS) or any(spec[k] not in SPEC_VALUES[k] for k in SPEC_KEYS):
            parse_spec(", ".join(f"{k} {v}" for k, v in spec.items()))  # raises, naming the token
            raise ValueError(f"spec dict {spec!r} must have exactly the keys {', '.join(SPEC_KEYS)}")
        return spec
    return parse_spec(spec)


def format_spec(spec: dict, full: bool = False) -> str:
    """Write a spec dict back as text in canonical key order.

    With ``full=False`` keys at their default value are left out (the empty string means all
    defaults); ``parse_spec(format_spec(d)) == d``. Introduced in 01_data_synthesis.
    """
    return ", ".join(
        f"{k} {spec[k]}" for k in SPEC_KEYS if full or spec[k] != SPEC_DEFAULTS[k]
    )


# --- Encoders: text -> integer ids for the RNNs ---------------------------------------

#: Id 0 pads sequences; chars ids are 1 + the position in ALPHABET.
PAD_ID = 0
#: Spec vocabulary: padding, the 5 keys, then every value (weight and style share 'normal').
SPEC_VOCAB = ("<pad>",) + SPEC_KEYS + tuple(dict.fromkeys(v for k in SPEC_KEYS for v in SPEC_VALUES[k]))
#: A spec is always encoded in full: key id then value id for each key in SPEC_KEYS order.
SPEC_LENGTH = 2 * len(SPEC_KEYS)
CHARS_VOCAB_SIZE = len(ALPHABET) + 1
SPEC_VOCAB_SIZE = len(SPEC_VOCAB)
_SPEC_TOKEN_ID = {t: i for i, t in enumerate(SPEC_VOCAB)}


def encode_chars(chars: str) -> np.ndarray:
    """Encode chars as int32 ids of length MAX_CHARS, right-padded with PAD_ID.

    Introduced in 01_data_synthesis.
    """
    validate_chars(chars)
    ids = np.zeros(MAX_CHARS, np.int32)
    ids[: len(chars)] = [ALPHABET.index(c) + 1 for c in chars]
    return ids


def decode_chars(ids) -> str:
    """Inverse of encode_chars: padding ids are dropped. Introduced in 01_data_synthesis."""
    return "".join(ALPHABET[i - 1] for i in np.asarray(ids).tolist() if i != PAD_ID)


def encode_spec(spec) -> np.ndarray:
    """Encode a spec (str or canonical dict) as SPEC_LENGTH int32 ids.

    The canonical order is ``color, backgroundcolor, fontfamily, fontweight, fontstyle``, each
    key written out (defaults filled in) as its key token followed by its value token, so every
    spec has the same length and equal specs have equal ids. Introduced in 01_data_synthesis.
    """
    d = as_spec(spec)
    return np.array(
        [_SPEC_TOKEN_ID[t] for k in SPEC_KEYS for t in (k, d[k])], np.int32
    )


def decode_spec(ids) -> dict:
    """Inverse of encode_spec: ids back to the canonical spec dict. Introduced in 01_data_synthesis."""
    tokens = [SPEC_VOCAB[i] for i in np.asarray(ids).tolist() if i != PAD_ID]
    return parse_spec(", ".join(f"{k} {v}" for k, v in zip(tokens[::2], tokens[1::2])))


def encode_texts(texts) -> tuple[np.ndarray, np.ndarray]:
    """Encode a list of (chars, spec) into the model inputs ``(chars_ids, spec_ids)``.

    Every text is validated first, so bad input fails here with a clear message, before any
    TensorFlow code runs. Introduced in 01_data_synthesis.
    """
    texts = list(texts)
    chars_ids = np.zeros((len(texts), MAX_CHARS), np.int32)
    spec_ids = np.zeros((len(texts), SPEC_LENGTH), np.int32)
    for i, (chars, spec) in enumerate(texts):
        chars_ids[i] = encode_chars(chars)
        spec_ids[i] = encode_spec(spec)
    return chars_ids, spec_ids


# =====================================================================================
# 2. Rendering                                               (Introduced in 01_data_synthesis)
# =====================================================================================

IMAGE_SIZE = 128
#: Dots per inch of the reference figure: a 1.28 x 1.28 inch figure is 128 x 128 pixels.
DPI = 100
#: Font size in points: the widest string ('WWW', serif bold italic) keeps a 5-pixel margin.
FONT_SIZE = 24

_FONT_FILES = {
    ("sans-serif", "normal", "normal"): "DejaVuSans.ttf",
    ("sans-serif", "bold", "normal"): "DejaVuSans-Bold.ttf",
    ("sans-serif", "normal", "italic"): "DejaVuSans-Oblique.ttf",
    ("sans-serif", "bold", "italic"): "DejaVuSans-BoldOblique.ttf",
    ("serif", "normal", "normal"): "DejaVuSerif.ttf",
    ("serif", "bold", "normal"): "DejaVuSerif-Bold.ttf",
    ("serif", "normal", "italic"): "DejaVuSerif-Italic.ttf",
    ("serif", "bold", "italic"): "DejaVuSerif-BoldItalic.ttf",
    ("monospace", "normal", "normal"): "DejaVuSansMono.ttf",
    ("monospace", "bold", "normal"): "DejaVuSansMono-Bold.ttf",
    ("monospace", "normal", "italic"): "DejaVuSansMono-Oblique.ttf",
    ("monospace", "bold", "italic"): "DejaVuSansMono-BoldOblique.ttf",
}


@functools.lru_cache(maxsize=None)
def font_file(family: str, weight: str, style: str) -> str:
    """Path of the DejaVu font file shipped inside matplotlib for a (family, weight, style).

    Fonts come from matplotlib's own data folder, never from the system, so an image is the same
    on every machine. Introduced in 01_data_synthesis.
    """
    return os.path.join(
        matplotlib.get_data_path(), "fonts", "ttf", _FONT_FILES[(family, weight, style)]
    )


@functools.lru_cache(maxsize=None)
def _font_properties(family: str, weight: str, style: str):
    return FontProperties(fname=font_file(family, weight, style), size=FONT_SIZE)


def color_rgb(name: str) -> np.ndarray:
    """Matplotlib's RGB (floats in [0, 1]) for one of COLORS. Introduced in 01_data_synthesis."""
    if name not in COLORS:
        raise ValueError(f"unknown colour {name!r}; allowed: {', '.join(COLORS)}")
    return np.array(to_rgb(name))


def _new_figure(facecolor="white"):
    fig = Figure(figsize=(IMAGE_SIZE / DPI, IMAGE_SIZE / DPI), dpi=DPI, facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def render_matplotlib(chars: str, spec) -> np.ndarray:
    """The reference renderer: one new matplotlib figure per image, text centred.

    Returns uint8 (128, 128, 3). Slow but obviously right; `render` must agree with it.
    Introduced in 01_data_synthesis.
    """
    validate_chars(chars)
    d = as_spec(spec)
    fig = _new_figure(facecolor=d["backgroundcolor"])
    fig.text(
        0.5, 0.5, chars, ha="center", va="center", color=d["color"],
        fontproperties=_font_properties(d["fontfamily"], d["fontweight"], d["fontstyle"]),
    )
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


def render_pyplot_per_figure(chars: str, spec) -> np.ndarray:
    """The original project's way, kept as the speed baseline: a new pyplot figure and axes per
    image, text drawn on the axes, the canvas read back, the figure closed.

    Same picture as `render_matplotlib` (tested), several times slower.
    Introduced in 01_data_synthesis.
    """
    validate_chars(chars)
    d = as_spec(spec)
    fig, ax = plt.subplots(1, figsize=(IMAGE_SIZE / DPI, IMAGE_SIZE / DPI), dpi=DPI,
                           facecolor=d["backgroundcolor"])
    ax.set_position([0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    ax.text(0.5, 0.5, chars, ha="center", va="center", color=d["color"],
            fontproperties=_font_properties(d["fontfamily"], d["fontweight"], d["fontstyle"]))
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return image


class _MaskRenderer:
    """Draws the glyphs of a string straight onto one reused Agg canvas, black on transparent.

    The alpha channel of the result is the anti-aliasing coverage of the glyphs, which is all
    that depends on (chars, font); colours are applied afterwards with numpy. It places the text
    the way a centred single-line `matplotlib.text.Text` does (`Text._get_layout`): the line box
    is the string's measured ascent and descent, each at least the font's typographic ascender
    and descender, and its centre goes to the image centre. Calling the Agg renderer directly
    skips the artist machinery and gives the same pixels, bit for bit (tested against
    `_text_artist_coverage`).

    What the artist would compute again for every string is cached per glyph: its control box
    and advance (`FT2Font.set_text`'s measurement of a string is the pen's advance for the width
    and the union of the glyphs' boxes for height and descent), and its anti-aliased bitmap for
    each 1/64-pixel phase of its position (FreeType draws a glyph moved by whole pixels the same).
    3-character strings are laid out pair by pair from cached pair layouts (`_layout`). A fresh
    level-2 image takes 0.11 ms once every pair is laid out (`warm_up`; `benchmarks/run.py`),
    colouring only the box that holds the ink (`draw`). It uses private pieces of matplotlib's Agg backend
    (``FT2Font._layout``, ``_set_transform``, ``_render_glyph``, ``draw_text_image``, as in the
    pinned 3.11.2 ``RendererAgg._draw_text_glyphs_and_boxes``): the bit-for-bit test is what
    guards a matplotlib upgrade. (``_layout`` is needed for the glyphs: the fonts shape "ff" and
    "fi" into ligatures, one glyph for two characters.)
    """
    def __init__(self):
        self._lock = threading.Lock()
        self._renderer = None

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _line_metrics(family: str, weight: str, style: str) -> tuple:
        """The font's typographic (ascender, descender) in pixels, as `Text._get_layout` reads them."""
        font = get_font(font_file(family, weight, style))
        os2 = font.get_sfnt_table("OS/2")
        scale = FONT_SIZE * DPI / 72 / font.get_sfnt_table("head")["unitsPerEm"]
        return os2["sTypoAscender"] * scale, -os2["sTypoDescender"] * scale

    @staticmethod
    def _font_layout(fname: str, chars: str, flags) -> tuple:
        """``FT2Font._layout`` of chars: ((font file, glyph, x, y), ...), x and y in pixels."""
        font = get_font(fname)
        font.set_size(FONT_SIZE, DPI)
        return tuple((item.ft_object.fname, item.glyph_index, item.x, item.y)
                     for item in font._layout(chars, flags=flags))

    #: `_font_layout` of 1 or 2 characters, cached (62 + 62**2 strings per font at most).
    _short_layout = staticmethod(functools.lru_cache(maxsize=None)(_font_layout.__func__))

    def _layout(self, fname: str, chars: str, flags) -> tuple:
        """``FT2Font._layout`` of chars. Pen positions add up pair by pair (each is the previous one
        plus advance and kerning), so 3 characters are the layouts of their two pairs, cached, put
        end to end; where a pair is drawn as one glyph (a ligature), the string is laid out whole."""
        if len(chars) <= 2:
            return self._short_layout(fname, chars, flags)
        glyphs = self._short_layout(fname, chars[:2], flags)
        for i in range(1, len(chars) - 1):
            pair = self._short_layout(fname, chars[i:i + 2], flags)
            if len(glyphs) != i + 1 or len(pair) != 2:
                return self._font_layout(fname, chars, flags)
            f, g, x, y = pair[1]
            glyphs += ((f, g, glyphs[i][2] + x, y),)
        return glyphs

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _glyph_box(fname: str, glyph: int, flags) -> tuple:
        """(ymin, ymax, advance) of one glyph at our size, in 1/64 pixel."""
        font = get_font(fname)
        font.set_size(FONT_SIZE, DPI)
        g = font.load_glyph(glyph, flags)
        return g.bbox[1], g.bbox[3], g.horiAdvance

    @staticmethod
    @functools.lru_cache(maxsize=1 << 16)
    def _glyph_bitmap(fname: str, glyph: int, flags, phase_x: int, phase_y: int) -> tuple:
        """(coverage, left, top) of one glyph drawn at (phase_x, phase_y)/64 pixel from the origin."""
        font = get_font(fname)
        font.set_size(FONT_SIZE, DPI)
        font._set_transform(np.array([[0x10000, 0], [0, 0x10000]]), [phase_x, phase_y])
        bitmap = font._render_glyph(glyph, flags, RenderMode.NORMAL)
        return np.array(bitmap.buffer), bitmap.left, bitmap.top  # draw_text_image wants it writable

    def warm_up(self, alphabet: str = ALPHABET):
        """Lay out every pair of ``alphabet`` in every font once (about 46,000 layouts, seconds): the
        cache state that a training run reaches after its first few hundred thousand images."""
        flags = get_hinting_flag()
        with self._lock:
            for font in FONTS:
                fname = font_file(*font)
                for a in alphabet:
                    for b in alphabet:
                        self._short_layout(fname, a + b, flags)

    def draw(self, chars: str, family: str, weight: str, style: str) -> tuple:
        """``(coverage, (row0, row1, col0, col1))``: the coverage mask of chars in one font (uint8
        128 x 128, 255 = fully inked) and a box that holds all its ink (the
        union of the glyph bitmaps drawn, clipped to the canvas; tested), so colouring can skip
        the rest, most of a level-2 image."""
        min_ascent, min_descent = self._line_metrics(family, weight, style)
        fname = font_file(family, weight, style)
        flags = get_hinting_flag()
        with self._lock:
            if self._renderer is None:
                self._renderer = RendererAgg(IMAGE_SIZE, IMAGE_SIZE, DPI)
                self._gc = self._renderer.new_gc()
                self._gc.set_foreground((0.0, 0.0, 0.0, 1.0), isRGBA=True)
            r = self._renderer
            glyphs = self._layout(fname, chars, flags)  # pen positions in pixels (1/64 steps)
            boxes = [self._glyph_box(f, g, flags) for f, g, _, _ in glyphs]
            # What FT2Font.set_text measures, in pixels: the pen's advance, and the ink's extent.
            width = glyphs[-1][2] + boxes[-1][2] / 64
            ymin = min(lo + round(64 * dy) for (lo, _, _), (_, _, _, dy) in zip(boxes, glyphs))
            ymax = max(hi + round(64 * dy) for (_, hi, _), (_, _, _, dy) in zip(boxes, glyphs))
            descent = -ymin / 64
            ascent = max((ymax - ymin) / 64 - descent, min_ascent)
            descent = max(descent, min_descent)
            # Baseline start, in Agg's downward y: centred box of width x (ascent + descent).
            x = IMAGE_SIZE / 2 - width / 2
            y = IMAGE_SIZE - (IMAGE_SIZE / 2 + (descent - ascent) / 2)
            r.clear()
            row0 = col0 = IMAGE_SIZE
            row1 = col1 = 0
            for glyph_file, glyph, dx, dy in glyphs:
                # Where RendererAgg._draw_text_glyphs_and_boxes puts the glyph, in 1/64 pixel (y upwards).
                px, py = round(0x40 * (x + dx)), round(0x40 * (IMAGE_SIZE - y + dy))
                buffer, left, top = self._glyph_bitmap(glyph_file, glyph, flags, px & 63, py & 63)
                left, top = left + (px >> 6), top + (py >> 6)
                height, width = buffer.shape
                r._renderer.draw_text_image(buffer, left, IMAGE_SIZE - top + height, 0, self._gc)
                row0, row1 = min(row0, IMAGE_SIZE - top), max(row1, IMAGE_SIZE - top + height)
                col0, col1 = min(col0, left), max(col1, left + width)
            box = (max(row0, 0), max(min(row1, IMAGE_SIZE), 0), max(col0, 0), max(min(col1, IMAGE_SIZE), 0))
            return np.asarray(r.buffer_rgba())[:, :, 3].copy(), box


def _text_artist_coverage(chars: str, family: str, weight: str, style: str) -> np.ndarray:
    """Coverage drawn by a centred `Text` artist on a transparent canvas: the check for
    `_MaskRenderer`, which must give the same array. Introduced in 01_data_synthesis."""
    fig = _new_figure()
    fig.patch.set_alpha(0.0)
    fig.text(0.5, 0.5, chars, ha="center", va="center", color="black",
             fontproperties=_font_properties(family, weight, style))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, 3].copy()


_MASK_RENDERER = _MaskRenderer()
#: How many coverage masks `glyph_mask` keeps (16 KiB each at 128 px: 64 MiB at most).
MASK_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def _mask_and_ink_box(chars: str, family: str, weight: str, style: str) -> tuple:
    """`glyph_mask`'s cache: the read-only mask and the box that holds its ink (`_MaskRenderer.draw`)."""
    mask, box = _MASK_RENDERER.draw(chars, family, weight, style)
    mask.setflags(write=False)
    return mask, box


def glyph_mask(chars: str, family: str = "sans-serif", weight: str = "normal",
               style: str = "normal") -> np.ndarray:
    """Coverage mask (uint8, 128 x 128, 255 = fully inked) of chars in one font, cached
    (`glyph_mask.cache_clear()` empties the cache). Introduced in 01_data_synthesis.
    """
    return _mask_and_ink_box(chars, family, weight, style)[0]


glyph_mask.cache_clear = _mask_and_ink_box.cache_clear


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 1 or IMAGE_SIZE % size:
        raise ValueError(f"size must divide {IMAGE_SIZE} (e.g. 16, 32, 64, 128), got {size!r}")
    return int(size)


def render(chars: str, spec, size: int = IMAGE_SIZE) -> np.ndarray:
    """Fast renderer: the cached coverage mask coloured with numpy; uint8 (size, size, 3).

    Matplotlib composites anti-aliased text as ``bg + coverage * (fg - bg)``, so colouring the
    mask reproduces `render_matplotlib` to within rounding (at most 2/255 per channel, tested).
    ``size`` must divide 128: smaller images are the 128-pixel coverage averaged over
    ``128/size`` x ``128/size`` blocks, i.e. an exact area down-sampling, useful for quick
    experiments. Introduced in 01_data_synthesis.
    """
    return _render_into(chars, spec, size, None)


def _render_into(chars: str, spec, size: int, out: np.ndarray | None) -> np.ndarray:
    """`render`, writing into ``out`` (a (size, size, 3) uint8 view) when given."""
    validate_chars(chars)
    size = _check_size(size)
    d = as_spec(spec)
    cov, (row0, row1, col0, col1) = _mask_and_ink_box(chars, d["fontfamily"], d["fontweight"], d["fontstyle"])
    if size == IMAGE_SIZE:
        # Background everywhere (one copy), then the colour lookup over the ink's box only (a few
        # glyphs in a 128 x 128 image). np.take on the first axis is ~4x faster than the equivalent
        # fancy indexing table[cov].
        table = _colour_table(d["color"], d["backgroundcolor"])
        if out is None:
            out = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        out[...] = _background_image(d["color"], d["backgroundcolor"])
        np.take(table, cov[row0:row1, col0:col1], axis=0, out=out[row0:row1, col0:col1])
        return out
    f = IMAGE_SIZE // size
    cov = cov.reshape(size, f, size, f).mean(axis=(1, 3), dtype=np.float64)
    fg = color_rgb(d["color"]) * 255.0
    bg = color_rgb(d["backgroundcolor"]) * 255.0
    image = np.rint(bg + (cov[..., None] / 255.0) * (fg - bg)).astype(np.uint8)
    if out is None:
        return image
    out[...] = image
    return out


@functools.lru_cache(maxsize=None)
def _colour_table(color: str, backgroundcolor: str) -> np.ndarray:
    """(256, 3) uint8 lookup: the pixel for every coverage value, so colouring is one indexing."""
    fg, bg = color_rgb(color) * 255.0, color_rgb(backgroundcolor) * 255.0
    table = np.rint(bg + (np.arange(256)[:, None] / 255.0) * (fg - bg)).astype(np.uint8)
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=None)
def _background_image(color: str, backgroundcolor: str) -> np.ndarray:
    """A read-only (128, 128, 3) uint8 image without ink: `_colour_table`'s entry for coverage 0."""
    pixel = _colour_table(color, backgroundcolor)[0]
    image = np.ascontiguousarray(np.broadcast_to(pixel, (IMAGE_SIZE, IMAGE_SIZE, 3)))
    image.setflags(write=False)
    return image


def render_batch(texts, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a list of (chars, spec) into uint8 (n, size, size, 3). Introduced in 01_data_synthesis."""
    texts = list(texts)
    out = np.empty((len(texts), size, size, 3), np.uint8)
    for i, (chars, spec) in enumerate(texts):
        _render_into(chars, spec, size, out[i])
    return out


def show_images(images, titles=None, ncols: int = 8, scale: float = 1.4, path: str | None = None,
                suptitle: str | None = None):
    """Plot uint8 images in a grid with optional titles; save to ``path`` if given.

    Returns the figure. Introduced in 01_data_synthesis.
    """
    images = list(images)
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3 * bool(titles)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    return fig


def to_unit_range(images) -> np.ndarray:
    """uint8 images [0, 255] -> float32 in [-1, 1] (the tanh scale). Introduced in 01_data_synthesis."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] -> uint8 [0, 255]. Introduced in 01_data_synthesis."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# =====================================================================================
# 3. Sampling, curriculum, held-out rule, kerned pairs, tf.data (Introduced in 01_data_synthesis)
# =====================================================================================

#: Difficulty levels: 0 = the original's task, 1 = full alphabet, 2 = fonts too.
LEVELS = {
    0: "digits only, exactly 2 chars, colours only",
    1: f"full alphabet, 1-{MAX_CHARS} chars, colours only",
    2: f"full alphabet, 1-{MAX_CHARS} chars, colours, font family, weight and style",
}
#: One chars string in HELD_OUT_MODULUS is held out: crc32(chars) % HELD_OUT_MODULUS == 0.
HELD_OUT_MODULUS = 50


def is_held_out(chars: str) -> bool:
    """True for the chars strings that training never samples (about 2 %).

    The rule is ``zlib.crc32(chars.encode()) % 50 == 0``: deterministic, the same on every
    machine and Python version. No single character is held out (none of the 62 hashes to 0),
    4 of the 100 two-digit strings are ('29', '37', '40', '88'), and 2 % of the rest.
    Introduced in 01_data_synthesis.
    """
    return zlib.crc32(chars.encode()) % HELD_OUT_MODULUS == 0


def _level_alphabet_and_lengths(level: int):
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    return ("0123456789", (2,)) if level == 0 else (ALPHABET, tuple(range(1, MAX_CHARS + 1)))


@functools.lru_cache(maxsize=None)
def held_out_strings(level: int, length: int) -> tuple:
    """All held-out chars strings of one length at a level (sorted). Introduced in 01_data_synthesis."""
    alphabet, _ = _level_alphabet_and_lengths(level)
    return tuple(
        s for s in ("".join(p) for p in itertools.product(alphabet, repeat=length)) if is_held_out(s)
    )


def count_combinations(level: int) -> dict:
    """Count the distinct (chars, spec) texts at a level, split into train and held-out.

    Colour pairs exclude text colour == background colour (8 x 7 = 56 pairs).
    Introduced in 01_data_synthesis.
    """
    alphabet, lengths = _level_alphabet_and_lengths(level)
    n_chars = sum(len(alphabet) ** n for n in lengths)
    n_held = sum(len(held_out_strings(level, n)) for n in lengths)
    n_specs = len(COLORS) * (len(COLORS) - 1) * (len(FONTS) if level == 2 else 1)
    return {
        "level": level, "chars": n_chars, "specs": n_specs, "texts": n_chars * n_specs,
        "held_out_chars": n_held, "held_out_texts": n_held * n_specs,
    }


def sample_text(rng: np.random.Generator, level: int = 2, split: str = "train") -> tuple:
    """Draw one random (chars, spec) text at a difficulty level.

    The length is uniform over the level's lengths, then each character uniform. ``split`` is
    ``"train"`` (never a held-out chars string) or ``"heldout"`` (only held-out strings; lengths
    without one are skipped). The text colour is redrawn while it equals the background. Levels 0
    and 1 give colour-only specs, level 2 the full canonical spec.
    Introduced in 01_data_synthesis.
    """
    chars, spec = _sample_text(rng, level, split)
    if level == 2:
        return chars, format_spec(spec, full=True)
    return chars, f"color {spec['color']}, backgroundcolor {spec['backgroundcolor']}"


def _random_chars(rng: np.random.Generator, alphabet: str, n: int) -> str:
    """``n`` characters drawn uniformly from ``alphabet``: the draws of ``rng.choice(list(alphabet), n)``
    (``choice`` calls ``integers`` so; tested), at a third of its cost."""
    return "".join([alphabet[i] for i in rng.integers(0, len(alphabet), n).tolist()])


def _sample_text(rng: np.random.Generator, level: int, split: str) -> tuple:
    """`sample_text`'s draw, with the spec as its canonical dict (the pipeline skips parsing)."""
    alphabet, lengths = _level_alphabet_and_lengths(level)
    if split == "train":
        n = lengths[int(rng.integers(len(lengths)))]
        while True:
            chars = _random_chars(rng, alphabet, n)
            if not is_held_out(chars):
                break
    elif split == "heldout":
        pools = [held_out_strings(level, n) for n in lengths]
        pools = [p for p in pools if p]
        pool = pools[int(rng.integers(len(pools)))]
        chars = pool[int(rng.integers(len(pool)))]
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    bg = COLORS[int(rng.integers(len(COLORS)))]
    fg = bg
    while fg == bg:
        fg = COLORS[int(rng.integers(len(COLORS)))]
    spec = dict(SPEC_DEFAULTS, color=fg, backgroundcolor=bg)
    if level == 2:
        family, weight, style = FONTS[int(rng.integers(len(FONTS)))]
        spec.update(fontfamily=family, fontweight=weight, fontstyle=style)
    return chars, spec


@functools.lru_cache(maxsize=None)
def kerned_pairs(family: str = "sans-serif", weight: str = "normal", style: str = "normal",
                 alphabet: str = ALPHABET) -> dict:
    """``{(a, b): pixels}`` for every pair of ``alphabet`` that the font kerns (moves ``b`` by a
    nonzero number of pixels at our size), read from the font's kerning table as the renderer
    applies it.

    Kerning belongs to the pair and follows no visible rule: DejaVu Sans pulls ``w`` 5.5 pixels
    towards a ``T`` but ``v`` not at all. The monospace fonts kern nothing. (``UNFITTED``
    kerning is what the renderer's layout applies, to the 1/64 pixel; tested.)
    Introduced in 01_data_synthesis.
    """
    font = get_font(font_file(family, weight, style))
    font.set_size(FONT_SIZE, DPI)
    index = {c: font.get_char_index(ord(c)) for c in alphabet}
    pairs = {(a, b): font.get_kerning(index[a], index[b], Kerning.UNFITTED) / 64
             for a in alphabet for b in alphabet}
    return {p: k for p, k in pairs.items() if k}


def sample_kerned_text(rng: np.random.Generator, level: int = 2) -> tuple:
    """A training text (never held out) whose chars contain a pair that its font kerns.

    The spec is drawn as in `sample_text`; a kerned pair of that font is put at a random place in
    a 2- or 3-character string, the other character uniform. Where the font kerns no pair of the
    level's alphabet (monospace, digits), it returns `sample_text`'s draw instead. Returns the
    spec as a dict, like the pipeline's own draws. Introduced in 01_data_synthesis.
    """
    chars, spec = _sample_text(rng, level, "train")
    alphabet, lengths = _level_alphabet_and_lengths(level)
    pairs = list(kerned_pairs(spec["fontfamily"], spec["fontweight"], spec["fontstyle"], alphabet))
    lengths = [n for n in lengths if n >= 2]
    if not pairs or not lengths:
        return chars, spec
    while True:
        n = lengths[int(rng.integers(len(lengths)))]
        at = int(rng.integers(n - 1))
        pair = "".join(pairs[int(rng.integers(len(pairs)))])
        chars = _random_chars(rng, alphabet, n)
        chars = chars[:at] + pair + chars[at + 2:]
        if not is_held_out(chars):
            return chars, spec


def sample_texts(n: int, level: int = 2, seed: int = 0, split: str = "train") -> list:
    """`n` texts from `sample_text` with a fixed seed (same seed, same list).

    Introduced in 01_data_synthesis.
    """
    rng = np.random.default_rng(seed)
    return [sample_text(rng, level, split) for _ in range(n)]


class Curriculum:
    """The difficulty level the data pipeline samples at; training may raise it while it runs.

    Introduced in 01_data_synthesis.
    """
    def __init__(self, level: int = 0):
        _level_alphabet_and_lengths(level)
        self.level = level

    def __repr__(self):
        return f"Curriculum(level={self.level})"


def sample_batch(rng: np.random.Generator, batch_size: int, level: int = 2,
                 size: int = IMAGE_SIZE, split: str = "train", as_uint8: bool = False,
                 kerned_share: float = 0.0) -> tuple:
    """One training batch: ``({"chars": ids, "spec": ids}, images)`` as numpy arrays.

    The keys are the generator's input names; images are float32 in [-1, 1], or the uint8
    renderings with ``as_uint8=True`` (what the tf.data pipeline carries: 4x fewer bytes, and the
    conversion then runs in TensorFlow, outside Python). With ``kerned_share`` > 0 (train split
    only) each text is, with that probability, a `sample_kerned_text` draw instead.
    Introduced in 01_data_synthesis.
    """
    if kerned_share and split != "train":
        raise ValueError(f"kerned_share applies to the train split only, got split {split!r}")
    # Specs stay dicts from sampling to encoding and drawing: parsing text twice per image cost
    # an eighth of the pipeline's time. Same draws, same arrays as sampling text (tested).
    texts = [sample_kerned_text(rng, level) if kerned_share and rng.random() < kerned_share
             else _sample_text(rng, level, split) for _ in range(batch_size)]
    chars_ids, spec_ids = encode_texts(texts)
    images = render_batch(texts, size)
    return {"chars": chars_ids, "spec": spec_ids}, images if as_uint8 else to_unit_range(images)


def batch_generator(batch_size: int, level=2, seed: int = 0, size: int = IMAGE_SIZE,
                    split: str = "train", as_uint8: bool = False):
    """Infinite, seeded Python generator of `sample_batch` batches.

    ``level`` is an int or a `Curriculum` read at every batch. Whole batches are made at once,
    so a tf.data pipeline built on it calls Python once per batch, not once per image.
    Introduced in 01_data_synthesis.
    """
    curriculum = level if isinstance(level, Curriculum) else Curriculum(level)
    rng = np.random.default_rng(seed)
    while True:
        yield sample_batch(rng, batch_size, curriculum.level, size, split, as_uint8=as_uint8)


#: glibc ``mallopt`` parameters (malloc.h) and the values `reuse_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
REUSED_MEMORY_BYTES = {"mmap_threshold": 32 << 20, "trim_threshold": 256 << 20}


@functools.lru_cache(maxsize=None)
def _libc_mallopt():
    """glibc's ``mallopt``, or None on a C library without it (macOS, musl)."""
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed buffers for reuse; True where it applied (Linux, glibc).

    The first time a `tf.data.Dataset.from_generator` iterator runs, TensorFlow sets glibc's
    ``M_TRIM_THRESHOLD`` to 128 KiB (it logs "Memory patch applied"). That also freezes the size
    above which malloc maps fresh pages from the system at 128 KiB, so every larger buffer (a batch
    of images, each training step's activations) is mapped, faulted in page by page, zeroed and
    unmapped again, thousands of page faults per training step. After this call, buffers up to
    32 MiB come from malloc's heap, and up to 256 MiB of freed heap stays there for the next step
    (tested: a batch of images allocated again costs no page faults). `benchmarks/run.py` measures
    in-memory training under both settings side by side. The pipeline calls this as it starts
    (after TensorFlow's setting). Introduced in 01_data_synthesis.
    """
    mallopt = _libc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, REUSED_MEMORY_BYTES["mmap_threshold"])
                and mallopt(_M_TRIM_THRESHOLD, REUSED_MEMORY_BYTES["trim_threshold"]))


def _from_generator(generator_fn, signature):
    """`tf.data.Dataset.from_generator`, calling `reuse_freed_memory` each time the generator starts."""
    def batches():
        reuse_freed_memory()
        yield from generator_fn()
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


def _batches_dataset(generator_fn, batch_size: int, size: int):
    """tf.data from a Python generator of uint8 batches; the [-1, 1] scaling runs in TensorFlow."""
    signature = (
        {"chars": tf.TensorSpec((batch_size, MAX_CHARS), tf.int32),
         "spec": tf.TensorSpec((batch_size, SPEC_LENGTH), tf.int32)},
        tf.TensorSpec((batch_size, size, size, 3), tf.uint8),
    )
    return _from_generator(generator_fn, signature).map(_scale_images)


#: Batches each training pipeline keeps ready ahead of the step that consumes them.
PREFETCH_BATCHES = 2


def _prefetched(ds):
    """The end of every training pipeline: ``PREFETCH_BATCHES`` batches made ahead, in tf.data's
    background thread, and tf.data's autotuning switched off.

    With autotuning on (tf.data's default), from 1 in 20 to all of the ``fit`` calls in a run on this
    2-core machine ran every step at a half or two thirds of full speed, the cores idle in between
    (0.9 of 2 cores busy at half speed), even when fed one in-memory batch; with it off, none did.
    One generator, one map and a fixed prefetch leave nothing to tune. `benchmarks/run.py`
    counts the slow blocks both ways. Introduced in 01_data_synthesis.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def _scale_images(inputs, images):
    """The pipeline's map: uint8 images to float32 in [-1, 1], as `to_unit_range` does in numpy."""
    return inputs, tf.cast(images, tf.float32) / 127.5 - 1.0


def make_dataset(batch_size: int = 32, level=2, seed: int = 0, size: int = IMAGE_SIZE,
                 split: str = "train"):
    """The input pipeline: a seeded, infinite, batched, prefetched `tf.data.Dataset`.

    Elements are ``({"chars": int32 (B, MAX_CHARS), "spec": int32 (B, SPEC_LENGTH)}, images
    float32 (B, size, size, 3) in [-1, 1])``, ready for ``model.fit``. Rendering runs in tf.data's
    background thread while the model trains. Introduced in 01_data_synthesis.
    """
    _check_size(size)
    ds = _batches_dataset(lambda: batch_generator(batch_size, level, seed, size, split, as_uint8=True),
                          batch_size, size)
    return _prefetched(ds)


# =====================================================================================
# 4. The loss made for tanh                                       (Introduced in 00_tanh_loss)
# =====================================================================================

def tanh_cross_entropy(y_true, logits):
    """Elementwise cross-entropy for a tanh output, computed stably from the logits ``h``.

    ``log(1 + exp(-2|h|)) + |h| - y*h``, i.e. ``-(1/2)[(1+y)log(1+p) + (1-y)log(1-p)]`` with
    ``p = tanh(h)``, plus the constant ``log 2`` (dropped: it changes no gradient). Targets
    ``y`` are in [-1, 1]. The gradient with respect to ``h`` is ``tanh(h) - y``, and the value
    equals Keras' ``binary_crossentropy((1+y)/2, 2h, from_logits=True)``. Finite for any finite
    ``h`` in float16/32/64. Introduced in 00_tanh_loss.
    """
    h = ops.convert_to_tensor(logits)
    y = ops.cast(y_true, h.dtype)
    a = ops.abs(h)
    return ops.log1p(ops.exp(-2.0 * a)) + a - y * h


def naive_tanh_cross_entropy(y_true, p):
    """The textbook form ``-(1/2)[(1+y)log(1+p) + (1-y)log(1-p)]`` on the activations p.

    Only for comparison: it equals ``tanh_cross_entropy - log 2`` mathematically but overflows
    to inf/nan once ``tanh`` rounds to +-1. Introduced in 00_tanh_loss.
    """
    p = ops.convert_to_tensor(p)
    y = ops.cast(y_true, p.dtype)
    return -0.5 * ((1.0 + y) * ops.log(1.0 + p) + (1.0 - y) * ops.log(1.0 - p))


@keras.saving.register_keras_serializable(package="t2i")
class TanhCrossEntropy(keras.losses.Loss):
    """`tanh_cross_entropy` as a Keras loss for ``model.compile``; the model outputs logits.

    Averaged over pixels and channels, then over the batch. Introduced in 00_tanh_loss.
    """
    def __init__(self, name="tanh_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        per_element = tanh_cross_entropy(y_true, y_pred)
        axes = tuple(range(1, len(per_element.shape)))
        return ops.mean(per_element, axis=axes) if axes else per_element


# =====================================================================================
# 5. Symbolic checks for the derivation                           (Introduced in 00_tanh_loss)
# =====================================================================================

@dataclass
class IdentityCheck:
    """The verdict of `check_identity`: is ``lhs == rhs`` for every value of the symbols?

    Shows as a LaTeX equation with its verdict in Jupyter, as one line of text elsewhere.
    Introduced in 00_tanh_loss.
    """
    label: str
    lhs: object
    rhs: object
    holds: bool
    counterexample: dict | None = None

    def _values_text(self):
        if self.counterexample is None:
            return ""
        return ", ".join(f"{k}={v}" for k, v in self.counterexample.items())

    def __repr__(self):
        verdict = "True" if self.holds else f"False (differs at {self._values_text()})"
        return f"{self.label}: {verdict}"

    def _repr_latex_(self):
        verdict = r"$\checkmark$ True" if self.holds else (
            f"$\\times$ False at {self._values_text()}"
        )
        return f"{self.label}: ${sp.latex(self.lhs)} = {sp.latex(self.rhs)}$ {verdict}"


def check_identity(label: str, lhs, rhs, assumptions=None, trials: int = 200,
                   seed: int = 0) -> IdentityCheck:
    """Check a claimed identity ``lhs = rhs`` with sympy, and find a counterexample if false.

    First ``simplify(lhs - rhs) == 0`` (after rewriting hyperbolic functions as exponentials);
    if sympy cannot prove it, both sides are evaluated at ``trials`` random points (each symbol
    uniform in (-3, 3), or in its ``assumptions`` range given as ``{symbol: (low, high)}``). The
    identity holds only if every point agrees to 1e-9. Introduced in 00_tanh_loss.
    """
    diff = sp.simplify((sp.sympify(lhs) - sp.sympify(rhs)).rewrite(sp.exp))
    if diff == 0:
        return IdentityCheck(label, lhs, rhs, True)
    symbols = sorted(diff.free_symbols, key=lambda s: s.name)
    ranges = {s: (assumptions or {}).get(s, (-3.0, 3.0)) for s in symbols}
    f = sp.lambdify(symbols, diff, "mpmath")
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        point = {s: round(float(rng.uniform(*ranges[s])), 2) for s in symbols}
        value = complex(f(*[point[s] for s in symbols]))
        if not np.isfinite(value) or abs(value) > 1e-9:
            return IdentityCheck(label, lhs, rhs, False, {s.name: v for s, v in point.items()})
    return IdentityCheck(label, lhs, rhs, True)


# =====================================================================================
# 6. The generator: model, training, checkpoints                (Introduced in 02_train_generator)
# =====================================================================================

#: Epochs of the shipped run (each steps_per_epoch=200 batches of 32 images).
DEFAULT_EPOCHS = 160
#: Dtype policy the shipped run trained with. ``"mixed_bfloat16"`` (``--precision mixed_bfloat16``)
#: keeps float32 weights and computes in bfloat16, which CPUs with AVX512_BF16 or AMX run natively
#: (`lscpu | grep bf16`). Inference (`load_generator`) is float32 either way.
TRAINING_PRECISION = "mixed_bfloat16"
#: Share of training texts drawn around a kerned pair (`sample_kerned_text`) in the shipped run.
KERNED_SHARE = 0.25
#: Width of the shipped generator's pair features (`build_generator`'s ``pair_units``; 0: none).
PAIR_UNITS = 128
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
DEFAULT_GENERATOR_PATH = os.path.join(MODELS_DIR, "generator.keras")


@keras.saving.register_keras_serializable(package="t2i")
class ColourMix(keras.layers.Layer):
    """A 1x1 convolution whose kernel and bias differ per image: ``maps (B, H, W, K)`` times
    ``kernel (B, K, 3)`` plus ``bias (B, 3)`` gives the RGB logits ``(B, H, W, 3)``.

    The generator predicts kernel and bias from the spec, so colours are chosen by the text while
    the convolutions only have to draw the glyphs' coverage, which no colour changes.
    Introduced in 02_train_generator.
    """
    def call(self, maps, kernel, bias):
        return ops.einsum("bhwk,bkc->bhwc", maps, kernel) + bias[:, None, None, :]


def build_generator(chars_units: int = 256, spec_units: int = 64, dense_units: int = 512,
                    seed_size: int = 4, filters=(256, 128, 96, 64, 32), maps: int = 8,
                    position_units: int = 32, pair_units: int | None = None,
                    dtype: str | None = None) -> keras.Model:
    """The generator: two GRUs read chars and spec, a dense layer mixes them, and transposed
    convolutions up-sample a 4x4 feature map to 128x128x3 **logits** (``tanh`` of them is the
    image in [-1, 1]).

    ``filters[0]`` is the depth of the 4x4 map; each further entry is one stride-2 transposed
    convolution (4 -> 8 -> 16 -> 32 -> 64), and a last one draws ``maps`` full-size maps at 128.
    The output layer is a `ColourMix`: a 1x1 convolution whose weights come from the spec
    encoding. The original fed colour through every convolution; this split lets a batch teach
    every glyph shape in every colour at once.

    Next to the chars GRU, each of the ``MAX_CHARS`` positions has its own ``position_units``-wide
    embedding of the character there (padding included, so it also tells the length); they are
    concatenated with the GRU's encoding, so the dense layer can add up "which character at
    which position" directly. Same 120-epoch schedule with and without it: level 2 reached after 18 epochs
    instead of 28, level-2 held-out chars identified 97.6 % instead of 97.4 %, MAE 0.0062 instead
    of 0.0068. ``position_units=0`` leaves it out.

    ``pair_units`` adds pair features on top of those embeddings: a width-2 ReLU convolution
    gives, at each position, a feature of the character there together with the next one (the
    last character together with padding), computed the same way wherever the pair stands. How far
    apart two glyphs are drawn (kerning: ``T`` before ``w`` sits closer than before ``1``) belongs to the
    pair, so what the pair's features learn inside 3-character training strings also serves a held-out
    2-character string. ``None`` means `PAIR_UNITS`, the shipped model's; 0 leaves them out.
    On their own (128 units, uniform data) they left level-2 held-out chars at 98.4 % after 105
    epochs, still missing kerned ``Tw``; with a quarter of kerned training texts (`KERNED_SHARE`)
    the shipped 160-epoch run identifies all 500 held-out level-2 texts (README, Results).

    ``dtype`` is the Keras dtype policy of every layer (default: the global policy) but the last
    transposed convolution, the colour heads and the output, which are always float32 so the
    logits (and the loss) keep full precision (it costs no measurable time).
    ``"mixed_bfloat16"`` trains with float32 weights and bfloat16 arithmetic (see
    `TRAINING_PRECISION`); the weights are float32 under every policy, so a model built with one
    policy takes another's weights (`train_generator` saves a float32 model).
    Introduced in 02_train_generator.
    """
    layers = keras.layers
    kw = {"dtype": dtype} if dtype else {}
    head = {"dtype": "float32"}
    pair_units = PAIR_UNITS if pair_units is None else pair_units
    if pair_units and not position_units:
        raise ValueError("pair_units needs position_units > 0 (pairs are read from those embeddings)")
    if seed_size * 2 ** len(filters) != IMAGE_SIZE:
        raise ValueError(f"seed_size * 2**len(filters) must be {IMAGE_SIZE}, got {seed_size}, {filters}")
    chars = keras.Input((MAX_CHARS,), dtype="int32", name="chars")
    spec = keras.Input((SPEC_LENGTH,), dtype="int32", name="spec")
    c = layers.Embedding(CHARS_VOCAB_SIZE, 64, mask_zero=True, name="chars_embedding", **kw)(chars)
    c = layers.GRU(chars_units, name="chars_gru", **kw)(c)
    s = layers.Embedding(SPEC_VOCAB_SIZE, 32, name="spec_embedding", **kw)(spec)
    s = layers.GRU(spec_units, name="spec_gru", **kw)(s)
    parts = [c, s]
    if position_units:
        p = layers.Embedding(CHARS_VOCAB_SIZE, position_units, name="position_embedding", **kw)(chars)
        parts.insert(1, layers.Flatten(name="chars_by_position", **kw)(p))
        if pair_units:
            q = layers.Conv1D(pair_units, 2, padding="same", activation="relu", name="pairs", **kw)(p)
            parts.insert(2, layers.Flatten(name="pairs_by_position", **kw)(q))
    x = layers.Concatenate(name="text_encoding", **kw)(parts)
    x = layers.Dense(dense_units, activation="relu", name="dense", **kw)(x)
    x = layers.Dense(seed_size * seed_size * filters[0], activation="relu", name="seed_map", **kw)(x)
    x = layers.Reshape((seed_size, seed_size, filters[0]), **kw)(x)
    for i, f in enumerate(filters[1:], start=1):
        x = layers.Conv2DTranspose(f, 4, strides=2, padding="same", activation="relu",
                                   name=f"up{i}", **kw)(x)
    coverage = layers.Conv2DTranspose(maps, 4, strides=2, padding="same", name="coverage_maps",
                                      **head)(x)
    kernel = layers.Reshape((maps, 3), **head)(layers.Dense(maps * 3, name="colour_kernel", **head)(s))
    bias = layers.Dense(3, name="colour_bias", **head)(s)
    logits = ColourMix(name="logits", **head)(coverage, kernel, bias)
    return keras.Model({"chars": chars, "spec": spec}, logits, name="generator")


@keras.saving.register_keras_serializable(package="t2i")
def tanh_mae(y_true, logits):
    """Mean absolute error of ``tanh(logits)`` against targets in [-1, 1], per image.

    The original's metric, on the [-1, 1] scale. Introduced in 02_train_generator.
    """
    err = ops.abs(ops.tanh(logits) - ops.cast(y_true, logits.dtype))
    return ops.mean(err, axis=tuple(range(1, len(err.shape))))


def compile_generator(model: keras.Model, learning_rate=1e-3) -> keras.Model:
    """Compile with Adam, the tanh cross-entropy on logits and the tanh MAE metric.

    Introduced in 02_train_generator.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=TanhCrossEntropy(),
        metrics=[keras.metrics.MeanMetricWrapper(tanh_mae, name="mae")],
    )
    return model


def generate_batch(model: keras.Model, texts, batch_size: int = 64) -> np.ndarray:
    """The generator's images for a list of (chars, spec) texts: uint8 (n, 128, 128, 3).

    Texts are validated and encoded first, so bad input raises a clear ValueError/TypeError
    before the model runs. Introduced in 02_train_generator.
    """
    chars_ids, spec_ids = encode_texts(texts)
    out = np.empty((len(chars_ids), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i in range(0, len(chars_ids), batch_size):
        batch = {"chars": chars_ids[i:i + batch_size], "spec": spec_ids[i:i + batch_size]}
        out[i:i + batch_size] = to_uint8(np.tanh(_predict(model, batch)))
    return out


def _predict(model: keras.Model, batch: dict) -> np.ndarray:
    """``model.predict_on_batch`` (a compiled function: ~6x faster than ``model(batch)``), except
    for a model built under a multi-replica strategy, where Keras 3.15's predict_on_batch returns
    every replica's output stacked; ``predict`` splits the batch across replicas correctly."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        n = len(next(iter(batch.values())))
        return np.asarray(model.predict(batch, batch_size=n, verbose=0), np.float32)
    return np.asarray(model.predict_on_batch(batch), np.float32)


def _atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{base}.tmp{os.getpid()}{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _remove_stale_temporaries(folder: str | None) -> None:
    """Delete temporaries an interrupted `_atomic_write` left (the real files are never partial)."""
    if folder and os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and ".tmp" in name:
                os.remove(os.path.join(folder, name))


def _write_json(path: str, obj) -> None:

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    _atomic_write(path, write)


@dataclass
class TrainingState:
    """What a training run needs beyond the weights to resume exactly: the next epoch, the
    curriculum level and how many epochs were spent at it. Introduced in 02_train_generator."""
    epoch: int = 0
    level: int = 0
    epochs_at_level: int = 0


def _save_checkpoint(folder: str | None, model: keras.Model, state: TrainingState, history: list,
                     history_path: str | None) -> None:
    """Write model (with optimizer state), training state and history, each file atomically."""
    if folder:
        _atomic_write(os.path.join(folder, "model.keras"), model.save)
        _write_json(os.path.join(folder, "state.json"),
                    {"state": dataclasses.asdict(state), "history": history})
    if history_path:
        _write_json(history_path, history)


def _load_checkpoint(folder: str, strategy: tf.distribute.Strategy | None = None) -> tuple:
    """``(model, state, history)`` from a `_save_checkpoint` folder, the model restored in ``strategy``'s scope."""
    with open(os.path.join(folder, "state.json")) as f:
        saved = json.load(f)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = keras.models.load_model(os.path.join(folder, "model.keras"))
    print(f"resuming from {folder} at epoch {saved['state']['epoch'] + 1}, level {saved['state']['level']}")
    return model, TrainingState(**saved["state"]), saved["history"]


#: Curriculum: leave level L once the generator identifies the characters of PROMOTE_CHARS_ACC[L]
#: of the validation texts (`score_images`), or after MAX_EPOCHS_AT_LEVEL[L] epochs there,
#: whichever comes first. Level 2 is the last. (MAE is a poor signal here: blurred glyphs reach
#: a low MAE long before the characters can be told apart.)
PROMOTE_CHARS_ACC = {0: 0.9, 1: 0.9}
MAX_EPOCHS_AT_LEVEL = {0: 12, 1: 45}
#: Validation texts per epoch scored for characters (each needs ~60-180 renderings).
N_VAL_CHARS = 48
#: Texts drawn after every epoch (the same for every run), to watch the generator learn.
PROGRESS_TEXTS = (
    ("42", "color red, backgroundcolor blue"),
    ("07", "color white, backgroundcolor black"),
    ("Tf", "color yellow, backgroundcolor green"),
    ("aZ9", "color black, backgroundcolor cyan"),
    ("Qg", "color blue, backgroundcolor yellow, fontfamily serif, fontstyle italic"),
    ("W3m", "color magenta, backgroundcolor white, fontfamily monospace, fontweight bold"),
)


def epoch_dataset(state: TrainingState, steps: int, batch_size: int, seed: int,
                  size: int = IMAGE_SIZE, kerned_share: float = 0.0):
    """A finite dataset of ``steps`` batches for the epoch ``state.epoch`` at ``state.level``.

    Keras re-creates the iterator at each epoch, after the callbacks of the previous epoch ran,
    so the generator function reads the epoch and level then: batches of epoch ``e`` come from
    ``np.random.default_rng([seed, e])`` whatever happened before, which makes runs repeatable
    and a resumed run draw the same data. ``kerned_share`` goes to `sample_batch`.
    Introduced in 02_train_generator.
    """
    def batches():
        rng = np.random.default_rng([seed, state.epoch])
        level = state.level
        for _ in range(steps):
            yield sample_batch(rng, batch_size, level, size, as_uint8=True, kerned_share=kerned_share)

    ds = _batches_dataset(batches, batch_size, size)
    return _prefetched(ds.apply(tf.data.experimental.assert_cardinality(steps)))


class _EpochBookkeeping(keras.callbacks.Callback):
    """What the generator's and the discriminator's training callbacks share: the training state,
    the history row of an epoch and the curriculum step."""
    def __init__(self, state: TrainingState, checkpoint_dir: str | None, history_path: str | None,
                 history: list, batch_size: int, steps: int):
        super().__init__()
        self.state, self.checkpoint_dir, self.history_path = state, checkpoint_dir, history_path
        self.history, self.batch_size, self.steps = history, batch_size, steps
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):

        self.state.epoch = epoch
        self._t0 = time.perf_counter()

    def _row(self, epoch: int, logs, **metrics) -> dict:
        """The history row of the epoch that just ended: Keras' logs, ``metrics`` and the bookkeeping."""
        row = {k: float(v) for k, v in (logs or {}).items()}
        seen = (self.history[-1]["images_seen"] if self.history else 0) + self.steps * self.batch_size
        row.update(metrics, epoch=epoch + 1, level=self.state.level, images_seen=seen,
                   seconds=time.perf_counter() - self._t0,
                   learning_rate=float(ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        return row

    def _next_epoch(self, epoch: int, passed: bool, max_epochs_at_level: dict) -> None:
        """Count the epoch at its level; move up a level if ``passed`` or after the level's maximum."""
        st = self.state
        st.epochs_at_level += 1
        if st.level in max_epochs_at_level and (passed or st.epochs_at_level >= max_epochs_at_level[st.level]):
            st.level, st.epochs_at_level = st.level + 1, 0
        st.epoch = epoch + 1


class GeneratorTrainingCallback(_EpochBookkeeping):
    """Per-epoch bookkeeping of `train_generator`: validation MAE at the current level, the
    curriculum, the history JSON, the progress grid and an atomic checkpoint.

    Introduced in 02_train_generator.
    """
    def __init__(self, state: TrainingState, checkpoint_dir: str, history_path: str,
                 history: list, batch_size: int, steps: int, n_val: int = 192, seed: int = 0):
        super().__init__(state, checkpoint_dir, history_path, history, batch_size, steps)
        self.val = {}
        for level in LEVELS:
            texts = sample_texts(n_val, level, seed=10_000 + 100 * seed + level)
            self.val[level] = (texts, to_unit_range(render_batch(texts)))
        self.progress_truth = render_batch(PROGRESS_TEXTS, size=64)

    def on_epoch_end(self, epoch, logs=None):

        st = self.state
        texts, truth = self.val[st.level]
        generated = generate_batch(self.model, texts)
        val_mae = float(np.mean(np.abs(generated.astype(np.float32) / 127.5 - 1.0 - truth)))
        val_chars = score_images(texts[:N_VAL_CHARS], generated[:N_VAL_CHARS],
                                 _level_alphabet_and_lengths(st.level)[0])["chars_ok_mean"]
        row = self._row(epoch, logs, val_mae=val_mae, val_chars_acc=val_chars)
        if logs is not None:
            logs.update(val_mae=val_mae, val_chars_acc=val_chars, level=st.level)
        self.history.append(row)
        # The curriculum decides the level of the next epoch.
        self._next_epoch(epoch, val_chars >= PROMOTE_CHARS_ACC.get(st.level, np.inf), MAX_EPOCHS_AT_LEVEL)
        grid = generate_batch(self.model, PROGRESS_TEXTS)
        small = grid.reshape(len(grid), 64, 2, 64, 2, 3).mean(axis=(2, 4)).round().astype(np.uint8)
        self._save(small)

    def _save(self, progress_grid):

        ckpt = self.checkpoint_dir
        if not ckpt:  # a throw-away run (e.g. the notebook's demonstration): nothing to keep
            return
        progress_path = os.path.join(ckpt, "progress.npz")
        old = np.load(progress_path)["grids"] if os.path.exists(progress_path) else \
            np.zeros((0,) + progress_grid.shape, np.uint8)
        grids = np.concatenate([old[: self.state.epoch - 1], progress_grid[None]])
        _atomic_write(progress_path, lambda tmp: np.savez_compressed(tmp, grids=grids))
        _save_checkpoint(ckpt, self.model, self.state, self.history, self.history_path)


def train_generator(out_path: str | None = DEFAULT_GENERATOR_PATH, epochs: int = DEFAULT_EPOCHS,
                    steps_per_epoch: int = 200, batch_size: int = 32, seed: int = 0,
                    learning_rate: float = 1e-3, checkpoint_dir: str | None = None,
                    verbose="auto", model: keras.Model | None = None, start_level: int = 0,
                    strategy: tf.distribute.Strategy | None = None, callbacks=(),
                    precision: str = TRAINING_PRECISION, kerned_share: float = KERNED_SHARE,
                    pair_units: int = PAIR_UNITS):
    """Train the generator from scratch (or resume), with the curriculum over levels 0 -> 2.

    Data comes from `epoch_dataset`; the learning rate follows a cosine decay over all steps.
    After every epoch a checkpoint (model with optimizer state, training state, history,
    progress grids) is written atomically to ``checkpoint_dir`` (default: ``out_path`` + ``.ckpt``):
    an interrupted run restarted with the same arguments resumes there and loses at most the
    current epoch. At the end the model is saved without optimizer state to ``out_path``, its
    history to ``<out_path minus .keras>.history.json`` and the progress grids beside it.
    ``callbacks`` are extra Keras callbacks (e.g. ``keras.callbacks.TensorBoard``).
    ``precision`` is the dtype policy of a model built here (`build_generator`'s ``dtype``);
    the saved ``out_path`` model is float32 whatever it is. ``kerned_share`` is the share of
    training texts built around a pair their font kerns (`sample_kerned_text`), and ``pair_units``
    the width of the pair features of the model it builds (`build_generator`).
    ``strategy`` is a `tf.distribute.Strategy` (default: the current one, i.e. a single device).
    The model is built, compiled or restored in its scope and ``batch_size`` is the global batch,
    split across replicas: ``tf.distribute.MirroredStrategy()`` trains on all local GPUs,
    ``MultiWorkerMirroredStrategy()`` on several machines described by ``TF_CONFIG``.
    Returns ``(model, history)``. Introduced in 02_train_generator.
    """
    keras.utils.set_random_seed(seed)
    strategy = strategy or tf.distribute.get_strategy()
    stem = os.path.splitext(out_path)[0] if out_path else None
    checkpoint_dir = checkpoint_dir or (stem + ".ckpt" if stem else None)
    history_path = stem + ".history.json" if stem else None
    state, history = TrainingState(level=start_level), []
    if checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "state.json")):
        model, state, history = _load_checkpoint(checkpoint_dir, strategy)
    else:
        with strategy.scope():
            if model is None:
                model = build_generator(pair_units=pair_units, dtype=precision)
            schedule = keras.optimizers.schedules.CosineDecay(
                learning_rate, decay_steps=epochs * steps_per_epoch, alpha=0.01)
            compile_generator(model, schedule)
    _remove_stale_temporaries(checkpoint_dir)
    callbacks = [GeneratorTrainingCallback(state, checkpoint_dir, history_path,
                                           history, batch_size, steps_per_epoch, seed=seed), *callbacks]
    if state.epoch < epochs:
        model.fit(epoch_dataset(state, steps_per_epoch, batch_size, seed, kerned_share=kerned_share),
                  epochs=epochs,
                  initial_epoch=state.epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    if out_path:
        # float32 whatever the training or global policy
        export = build_generator(pair_units=pair_units, dtype="float32")
        export.set_weights(model.get_weights())
        _atomic_write(out_path, export.save)
        _write_json(history_path, history)
        if checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "progress.npz")):
            shutil.copyfile(os.path.join(checkpoint_dir, "progress.npz"), stem + ".progress.npz")
    return model, history


# =====================================================================================
# 7. Using and evaluating the generator                          (Introduced in 02_train_generator)
# =====================================================================================

def load_generator(path: str | None = None) -> keras.Model:
    """Load a generator saved as ``.keras``; by default the shipped ``models/generator.keras``.

    Introduced in 02_train_generator.
    """
    path = path or DEFAULT_GENERATOR_PATH
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no generator at {path}; train one with: python t2i_utils.py train-generator --out {path}"
        )
    return keras.models.load_model(path, compile=False)


def generate(generator: keras.Model, chars: str, spec) -> np.ndarray:
    """The generator's image for one text: uint8 (128, 128, 3).

    Bad chars/spec raise a clear ValueError/TypeError before the model runs.
    Introduced in 02_train_generator.
    """
    return generate_batch(generator, [(chars, spec)])[0]


def _mae_to(image: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """MAE on the [-1, 1] scale between one uint8 image and each of a stack of candidates."""
    diff = np.abs(candidates.astype(np.int16) - image.astype(np.int16))
    return diff.reshape(len(candidates), -1).mean(axis=1) / 127.5


def chars_substitutions(chars: str, alphabet: str = ALPHABET) -> list:
    """Every string that differs from ``chars`` in exactly one character (same length).

    Introduced in 02_train_generator.
    """
    return [chars[:i] + c + chars[i + 1:] for i in range(len(chars)) for c in alphabet if c != chars[i]]


def estimate_colours(image: np.ndarray) -> tuple:
    """Read (text colour, background colour) off an image, each the nearest of COLORS.

    The background is the median of the 2-pixel frame (text never reaches it), snapped to the
    nearest colour. Anti-aliased text pixels lie on the segment from the background to the text
    colour, so the text colour is the one whose segment best explains the inked pixels (those at
    least a quarter as far from the background as the farthest): the least sum of squared
    distances after projecting each pixel onto the segment. Partial coverage and a few stray
    pixels do not sway it. Uses nothing but the image. Introduced in 02_train_generator.
    """
    img = image.astype(np.float32)
    frame = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                            img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    palette = np.stack([color_rgb(c) * 255 for c in COLORS]).astype(np.float32)
    bg_index = int(np.argmin(np.abs(palette - np.median(frame, axis=0)).sum(axis=1)))
    bg = palette[bg_index]
    flat = img.reshape(-1, 3) - bg
    distance = np.abs(flat).sum(axis=1)
    ink = flat[distance >= 0.25 * max(distance.max(), 1e-6)]
    errors = []
    for i, colour in enumerate(palette):
        v = colour - bg
        if i == bg_index:
            errors.append(np.inf)
            continue
        a = np.clip(ink @ v / (v @ v), 0.0, 1.0)
        errors.append(float(((ink - a[:, None] * v) ** 2).sum()))
    return COLORS[int(np.argmin(errors))], COLORS[bg_index]


def score_images(texts, images, alphabet: str = ALPHABET) -> dict:
    """Exact metrics of images (uint8) against the true renderings of their texts.

    Per text: ``mae`` on the [-1, 1] scale; ``chars_ok``: the image is strictly closer (MAE) to
    the true rendering than to the rendering of every single-character substitution of chars
    by a character of ``alphabet`` (same spec): the strict analogue of an OCR exact match;
    ``font_ok``: strictly closer than to the same chars in each of the 11 other fonts;
    ``colour_ok``: text and background colours read off the image (`estimate_colours`) both
    match the spec. Returns per-text arrays and their means. Introduced in 02_train_generator.
    """
    rows = {"mae": [], "chars_ok": [], "font_ok": [], "colour_ok": []}
    for (chars, spec), image in zip(texts, images):
        d = as_spec(spec)
        truth = render(chars, d)
        d_true = _mae_to(image, truth[None])[0]
        subs = render_batch([(c, d) for c in chars_substitutions(chars, alphabet)])
        other_fonts = render_batch([(chars, dict(d, fontfamily=f, fontweight=w, fontstyle=s))
                                    for f, w, s in FONTS
                                    if (f, w, s) != (d["fontfamily"], d["fontweight"], d["fontstyle"])])
        rows["mae"].append(d_true)
        rows["chars_ok"].append(bool(d_true < _mae_to(image, subs).min()))
        rows["font_ok"].append(bool(d_true < _mae_to(image, other_fonts).min()))
        rows["colour_ok"].append(estimate_colours(image) == (d["color"], d["backgroundcolor"]))
    out = {k: np.array(v) for k, v in rows.items()}
    out.update({f"{k}_mean": float(v.mean()) for k, v in list(out.items())})
    return out


def evaluate_generator(generator: keras.Model, levels=(0, 1, 2), n: int = 500, seed: int = 0) -> list:
    """Score the generator on ``n`` seeded train texts and ``n`` held-out texts per level.

    Substitutions for the chars metric use the level's alphabet (digits at level 0). Returns one
    dict per (level, split) with MAE and the chars, font and colour accuracies. Introduced in 02_train_generator.
    """
    results = []
    for level in levels:
        for split in ("train", "heldout"):
            texts = sample_texts(n, level, seed=20_000 + seed + level, split=split)
            alphabet = _level_alphabet_and_lengths(level)[0]
            scores = score_images(texts, generate_batch(generator, texts), alphabet)
            results.append({"level": level, "split": split, "n": n,
                            "mae": scores["mae_mean"], "chars_acc": scores["chars_ok_mean"],
                            "font_acc": scores["font_ok_mean"], "colour_acc": scores["colour_ok_mean"]})
    return results


def format_evaluation(results) -> str:
    """The results of `evaluate_generator` as a Markdown table. Introduced in 02_train_generator."""
    lines = ["| level | split | texts | MAE [-1, 1] | chars identified | font identified | colours right |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['level']} | {r['split']} | {r['n']} | {r['mae']:.4f} | {100 * r['chars_acc']:.1f} % "
                     f"| {100 * r['font_acc']:.1f} % | {100 * r['colour_acc']:.1f} % |")
    return "\n".join(lines)


def plot_history(history, path: str | None = None):
    """Loss and MAE per epoch of a training history, with curriculum level changes marked.

    Returns the figure; saves it to ``path`` if given. Introduced in 02_train_generator.
    """
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in history], label="training loss (tanh cross-entropy)")
    axes[1].plot(epochs, [r["mae"] for r in history], label="training MAE (running, in epoch)")
    axes[1].plot(epochs, [r["val_mae"] for r in history], label="validation MAE (end of epoch, current level)")
    for ax in axes:
        for prev, row in zip(history, history[1:]):
            if row["level"] != prev["level"]:
                ax.axvline(prev["epoch"] + 0.5, color="grey", ls=":")
                ax.text(prev["epoch"] + 0.5, 0.97, f" level {row['level']}", transform=ax.get_xaxis_transform(),
                        va="top", fontsize=8, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    images = history[-1]["images_seen"]
    fig.suptitle(f"{len(history)} epochs, {images:,} training images")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    return fig


def show_comparison(generator: keras.Model, texts, path: str | None = None, title: str | None = None):
    """Rows of generated | true | |difference| (with the MAE) for a list of texts.

    Returns the figure; saves it to ``path`` if given. Introduced in 02_train_generator.
    """
    generated = generate_batch(generator, texts)
    truth = render_batch(texts)
    cells, titles = [], []
    for (chars, spec), g, t in zip(texts, generated, truth):
        diff = 255 - np.abs(g.astype(np.int16) - t).astype(np.uint8)
        cells += [g, t, diff]
        short = format_spec(parse_spec(spec)).replace("backgroundcolor", "bg").replace(", ", "\n", 1)
        titles += [f"{chars!r} {short}", "true", f"|diff| MAE {_mae_to(g, t[None])[0]:.3f}"]
    ncols = 6 if len(texts) > 1 else 3
    return show_images(cells, titles, ncols=ncols, scale=1.9, path=path, suptitle=title)


def progress_animation(grids: np.ndarray, path: str, every: int = 1, ms_per_frame: int = 150) -> int:
    """Write the per-epoch progress grids (epochs, n, h, w, 3) as an animated GIF, one row per
    frame, labelled with the epoch. Returns the number of frames. Introduced in 02_train_generator.
    """
    from PIL import Image, ImageDraw

    frames = []
    for e in range(0, len(grids), every):
        row = np.concatenate(list(grids[e]), axis=1)
        canvas = np.full((row.shape[0] + 14, row.shape[1], 3), 255, np.uint8)
        canvas[14:] = row
        image = Image.fromarray(canvas)
        ImageDraw.Draw(image).text((2, 1), f"epoch {e + 1}", fill=(0, 0, 0))
        frames.append(image)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return len(frames)


# =====================================================================================
# 8. The interactive widget                                     (Introduced in 02_train_generator)
# =====================================================================================

def _png(image: np.ndarray) -> bytes:

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class GeneratorWidget:
    """Type chars and a spec, see the generated image, the true rendering and their difference.

    Dropdowns fill the spec in; every keystroke updates the pictures. Invalid input shows the
    error message under the inputs and keeps the last good pictures. ``widget.box`` is the
    ipywidgets container (the notebook displays the object itself).
    Introduced in 02_train_generator.
    """
    def __init__(self, generator: keras.Model, chars: str = "4a",
                 spec: str = "color red, backgroundcolor blue"):
        import ipywidgets as w

        self.generator = generator
        self.chars = w.Text(value=chars, description="chars", continuous_update=True)
        self.spec = w.Text(value=spec, description="spec", continuous_update=True,
                           layout=w.Layout(width="34em"))
        self.dropdowns = {k: w.Dropdown(options=SPEC_VALUES[k], description=k,
                                        style={"description_width": "initial"},
                                        layout=w.Layout(width="15em"))
                          for k in SPEC_KEYS}
        self.message = w.HTML(value="")
        size = dict(width=192, height=192)
        self.images = {k: w.Image(format="png", **size) for k in ("generated", "true", "difference")}
        self.captions = {k: w.Label(value=k) for k in self.images}
        columns = [w.VBox([self.images[k], self.captions[k]]) for k in self.images]
        self.box = w.VBox([w.HBox([self.chars, self.spec]), w.HBox(list(self.dropdowns.values())),
                           self.message, w.HBox(columns)])
        self.last_model_ms = None
        self._syncing = False
        generate(generator, "0", "")  # trace the predict function once, so typing feels live
        self.chars.observe(self._on_text, names="value")
        self.spec.observe(self._on_text, names="value")
        for dropdown in self.dropdowns.values():
            dropdown.observe(self._on_dropdown, names="value")
        self.update()

    def _on_text(self, change=None):
        if not self._syncing:
            self.update()

    def _on_dropdown(self, change=None):
        if self._syncing:
            return
        spec = format_spec({k: d.value for k, d in self.dropdowns.items()})
        self.spec.value = spec  # triggers update()

    def update(self) -> bool:
        """Redraw for the current inputs; returns False (and shows why) on bad input."""
        try:
            chars = validate_chars(self.chars.value)
            spec = parse_spec(self.spec.value)
        except (TypeError, ValueError) as e:
            self.message.value = f'<span style="color:#b00020">&#9888; {html.escape(str(e))}</span>'
            return False
        self.message.value = ""
        self._syncing = True
        try:
            for k, dropdown in self.dropdowns.items():
                dropdown.value = spec[k]
        finally:
            self._syncing = False
        t0 = time.perf_counter()
        generated = generate(self.generator, chars, spec)
        self.last_model_ms = (time.perf_counter() - t0) * 1e3
        truth = render(chars, spec)
        diff = np.abs(generated.astype(np.int16) - truth).astype(np.uint8)
        mae = _mae_to(generated, truth[None])[0]
        for key, image in (("generated", generated), ("true", truth), ("difference", 255 - diff)):
            self.images[key].value = _png(image)
        self.captions["generated"].value = f"generated ({self.last_model_ms:.0f} ms)"
        self.captions["true"].value = "true rendering"
        self.captions["difference"].value = f"|difference| (dark = wrong), MAE {mae:.4f}"
        self.last_mae = float(mae)
        return True

    def _repr_mimebundle_(self, **kwargs):
        # The ipywidgets view, with a short text form instead of the children's (PNG bytes).
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self):
        return f"GeneratorWidget(chars={self.chars.value!r}, spec={self.spec.value!r})"


# =====================================================================================
# 9. The discriminator                                     (Introduced in 03_train_discriminator)
# =====================================================================================

DEFAULT_DISCRIMINATOR_PATH = os.path.join(MODELS_DIR, "discriminator.keras")
#: The three kinds of example. Only "real" is labelled 1.
KINDS = ("real", "mismatched", "generated")
#: Training batches alternate: all real, then all fake (half mismatched, half generated), so
#: real and fake weigh the same and P(real) = 0.5 means "cannot tell".
BATCH_KINDS = ("real", "fake")
#: How a mismatched example pairs a real rendering with another text (shares of the examples).
MISMATCH_MODES = {"chars": 0.60, "spec": 0.25, "both": 0.15}
#: Epochs of the shipped discriminator run (each D_STEPS_PER_EPOCH batches of 32 images).
D_EPOCHS = 40
D_STEPS_PER_EPOCH = 96
#: Curriculum: leave level L once the validation accuracy on real and on mismatched examples of
#: that level both reach D_PROMOTE_ACC, or after D_MAX_EPOCHS_AT_LEVEL[L] epochs there.
D_PROMOTE_ACC = 0.95
D_MAX_EPOCHS_AT_LEVEL = {0: 6, 1: 12}
#: The reading heads: each spec key is one classification over its allowed values.
READING_OUTPUTS = ("chars",) + SPEC_KEYS
#: Reading target that the reading losses skip (used for generated images).
IGNORE = -1


def mismatch_texts(rng: np.random.Generator, texts, level: int = 2, split: str = "train") -> tuple:
    """Pair every text with another one, for the mismatched fakes: ``(new_texts, modes)``.

    Each text draws a mode from MISMATCH_MODES: its chars are replaced (60 %), its spec (25 %) or
    both (15 %), taken from another text of the same batch in random order. A partner whose
    replaced part equals the text's own is skipped, so a mismatched text always differs from the
    image's true text where its mode says; if no text of the batch differs, a fresh text of the
    same level and split is drawn. Specs are compared as canonical dicts, i.e. as renderings.
    Introduced in 03_train_discriminator.
    """
    texts = [(c, as_spec(s)) for c, s in texts]
    modes = rng.choice(list(MISMATCH_MODES), size=len(texts), p=list(MISMATCH_MODES.values()))
    out = []
    for (chars, spec), mode in zip(texts, modes):
        def fits(other):
            return (mode == "spec" or other[0] != chars) and (mode == "chars" or other[1] != spec)
        partner = next((texts[j] for j in rng.permutation(len(texts)) if fits(texts[j])), None)
        while partner is None:
            candidate = _sample_text(rng, level, split)
            partner = candidate if fits(candidate) else None
        out.append((chars if mode == "spec" else partner[0], spec if mode == "chars" else partner[1]))
    return out, [str(m) for m in modes]


def reading_targets(texts) -> dict:
    """What the discriminator's reading heads must predict for images of ``texts``: the chars ids
    (B, MAX_CHARS) and, for each spec key, the index of its value in SPEC_VALUES.
    Introduced in 03_train_discriminator.
    """
    chars_ids, _ = encode_texts(texts)
    targets = {"chars": chars_ids}
    specs = [as_spec(s) for _, s in texts]
    for key in SPEC_KEYS:
        targets[key] = np.array([SPEC_VALUES[key].index(d[key]) for d in specs], np.int32)
    return targets


def discriminator_examples(rng: np.random.Generator, texts, kind: str, generator=None,
                           level: int = 2, split: str = "train") -> tuple:
    """Examples of one kind for ``texts``: ``(inputs, targets, shown)`` as numpy arrays.

    ``inputs``: the uint8 ``image`` and the ``chars``/``spec`` ids of the text ``shown`` with it.
    - ``real``: the true rendering with its own text;
    - ``mismatched``: the true rendering with another text (`mismatch_texts`);
    - ``generated``: the generator's image for the text, with that text.
    ``targets``: ``real`` (1.0 only for real examples) and the reading targets of the text the
    image actually shows (`reading_targets`); for generated images they are IGNORE, so the reading
    heads learn from true renderings only. Introduced in 03_train_discriminator.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    texts = [(c, as_spec(s)) for c, s in texts]
    shown = mismatch_texts(rng, texts, level, split)[0] if kind == "mismatched" else texts
    if kind == "generated":
        if generator is None:
            raise ValueError("generated examples need a generator")
        images = generate_batch(generator, texts)
    else:
        images = render_batch(texts)
    chars_ids, spec_ids = encode_texts(shown)
    reading = reading_targets(texts)
    if kind == "generated":  # the reading heads learn from true renderings only
        reading = {k: np.full_like(v, IGNORE) for k, v in reading.items()}
    targets = {"real": np.full((len(texts), 1), float(kind == "real"), np.float32), **reading}
    return {"image": images, "chars": chars_ids, "spec": spec_ids}, targets, shown


def mismatch_mode(text, shown) -> str:
    """Which part of ``shown`` differs from the true ``text``: "none", "chars", "spec" or "both".
    Introduced in 03_train_discriminator."""
    chars_differ, spec_differ = text[0] != shown[0], as_spec(text[1]) != as_spec(shown[1])
    return {(False, False): "none", (True, False): "chars", (False, True): "spec", (True, True): "both"}[
        (chars_differ, spec_differ)]


@keras.saving.register_keras_serializable(package="t2i")
class InkMap(keras.layers.Layer):
    """Where the ink is, whatever the colours: each pixel's distance from the background colour,
    scaled so the inkiest pixel of each image is 1: (B, H, W, 3) in [-1, 1] -> (B, H, W, 1).

    The background colour is the mean of the ``frame``-pixel border, which text never reaches
    (`estimate_colours` uses the same fact). Dark text on light, light on dark and every colour
    pair give the same map, so the convolutions that read glyphs need not learn 56 colour pairs.
    Introduced in 03_train_discriminator.
    """
    def __init__(self, frame: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.frame = frame

    def call(self, images):
        f = self.frame
        border = ops.concatenate([ops.reshape(images[:, :f], (-1, f * IMAGE_SIZE, 3)),
                                  ops.reshape(images[:, -f:], (-1, f * IMAGE_SIZE, 3)),
                                  ops.reshape(images[:, :, :f], (-1, f * IMAGE_SIZE, 3)),
                                  ops.reshape(images[:, :, -f:], (-1, f * IMAGE_SIZE, 3))], axis=1)
        background = ops.mean(border, axis=1)[:, None, None, :]
        distance = ops.sum(ops.abs(images - background), axis=-1, keepdims=True)
        return distance / (ops.max(distance, axis=(1, 2, 3), keepdims=True) + 1e-3)

    def get_config(self):
        return {**super().get_config(), "frame": self.frame}


@keras.saving.register_keras_serializable(package="t2i")
class ReadingAgreement(keras.layers.Layer):
    """How well the shown text agrees with what the reading heads read in the image: the
    log-probability the heads give to each character of the shown chars (padding included, so
    the length counts) and to each shown spec value, clipped at -20: (B, MAX_CHARS + 5).

    Gradients do not flow back into the reading heads: they learn to read from the reading loss
    alone, and the real/fake logit only learns how to weigh disagreement.
    Introduced in 03_train_discriminator.
    """
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # For each spec key: spec vocabulary id of a value -> its index among the key's values.
        self.value_index = np.zeros((len(SPEC_KEYS), SPEC_VOCAB_SIZE), np.int32)
        for k, key in enumerate(SPEC_KEYS):
            for j, value in enumerate(SPEC_VALUES[key]):
                self.value_index[k, _SPEC_TOKEN_ID[value]] = j

    def call(self, chars_logits, spec_logits, chars_ids, spec_ids):
        def logp(logits, index):
            lp = ops.log_softmax(ops.stop_gradient(logits), axis=-1)
            return ops.take_along_axis(lp, ops.expand_dims(ops.cast(index, "int32"), -1), axis=-1)[..., 0]

        parts = [logp(chars_logits, chars_ids)]
        for k, logits in enumerate(spec_logits):
            index = ops.take(ops.convert_to_tensor(self.value_index[k]), spec_ids[:, 2 * k + 1])
            parts.append(logp(logits, index)[:, None])
        return ops.maximum(ops.concatenate(parts, axis=-1), -20.0)


def build_discriminator(convs=((16, 1), (32, 2), (64, 2), (128, 2), (128, (2, 1)), (128, (2, 1))),
                        features: int = 256, noise: float = 0.1,
                        dropout: float = 0.3, chars_units: int = 128, spec_units: int = 64,
                        position_units: int = 32) -> keras.Model:
    """The conditional discriminator: image and text in, one **logit** (real vs fake) out, plus
    the reading heads that say what text the image shows.

    Image path: Gaussian noise on the input (our images are perfectly uniform), the image next to
    its `InkMap`, then convolutions with leaky ReLU, given as ``(filters, strides)``: the first
    keeps full resolution (glyphs are about 8 x 12 pixels), the last two halve only the height,
    so the 4 x 16 map keeps one column per 8 pixels of text. Then dropout and a dense layer: the
    image features. (With layer normalisation after each convolution, the reading heads had
    learned nothing after 360 reading-only steps at level 0, chars loss 1.58; without it, 98 %
    of characters were read by then, loss 0.07.) Text path: its own GRUs for chars and spec, per-position chars
    embeddings (as in the generator) and a dense layer: the text features, as wide as the image
    features. The logit reads both, their elementwise product (a projection discriminator:
    Miyato & Koyama, 2018) and the `ReadingAgreement` of the shown text with the image.

    The reading heads classify, from the image features alone, the character at each position
    and every spec value (an auxiliary classifier, as in AC-GAN). Training them on true
    renderings, whose text is known, teaches the image path to read; the real/fake output then
    only has to compare. Inputs are ``image`` (values 0..255, e.g. uint8; scaled to [-1, 1]
    inside), ``chars`` and ``spec`` ids.
    Introduced in 03_train_discriminator.
    """
    layers = keras.layers
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    chars = keras.Input((MAX_CHARS,), dtype="int32", name="chars")
    spec = keras.Input((SPEC_LENGTH,), dtype="int32", name="spec")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(image)
    x = layers.GaussianNoise(noise, name="input_noise")(x)
    x = layers.Concatenate(name="image_and_ink")([x, InkMap(name="ink")(x)])
    for i, (f, strides) in enumerate(convs, start=1):
        x = layers.Conv2D(f, 3, strides=strides, padding="same", name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"act{i}")(x)
    x = layers.Dropout(dropout, name="dropout")(layers.Flatten(name="flatten")(x))
    img = layers.Dense(features, activation="relu", name="image_features")(x)
    outputs = {"chars": layers.Reshape((MAX_CHARS, CHARS_VOCAB_SIZE), name="chars_reading")(
        layers.Dense(MAX_CHARS * CHARS_VOCAB_SIZE, name="chars_logits")(img))}
    for key in SPEC_KEYS:
        outputs[key] = layers.Dense(len(SPEC_VALUES[key]), name=key)(img)
    c = layers.Embedding(CHARS_VOCAB_SIZE, 64, mask_zero=True, name="chars_embedding")(chars)
    c = layers.GRU(chars_units, name="chars_gru")(c)
    p = layers.Flatten(name="chars_by_position")(
        layers.Embedding(CHARS_VOCAB_SIZE, position_units, name="position_embedding")(chars))
    s = layers.GRU(spec_units, name="spec_gru")(layers.Embedding(SPEC_VOCAB_SIZE, 32, name="spec_embedding")(spec))
    text = layers.Dense(features, activation="relu", name="text_features")(
        layers.Concatenate(name="text_encoding")([c, p, s]))
    agreement = layers.Multiply(name="agreement")([img, text])
    reading = ReadingAgreement(name="reading_agreement")(
        outputs["chars"], [outputs[k] for k in SPEC_KEYS], chars, spec)
    j = layers.Dense(features, name="joint")(
        layers.Concatenate(name="image_and_text")([img, text, agreement, reading]))
    outputs["real"] = layers.Dense(1, name="real")(layers.LeakyReLU(0.2, name="joint_act")(j))
    return keras.Model({"image": image, "chars": chars, "spec": spec},
                       {k: outputs[k] for k in ("real",) + READING_OUTPUTS}, name="discriminator")


def compile_discriminator(model: keras.Model, learning_rate=1e-3, reading_weight: float = 0.5,
                          accumulate: int = 1) -> keras.Model:
    """Compile with Adam, binary cross-entropy from the logit (Keras' own) and sparse categorical
    cross-entropy for each reading head (weighted ``reading_weight``, skipping IGNORE targets).

    ``accumulate``: Adam sums the gradients of that many batches before each update (Keras'
    ``gradient_accumulation_steps``; 1: every batch updates, as in the shipped run).
    Introduced in 03_train_discriminator.
    """
    losses = {"real": keras.losses.BinaryCrossentropy(from_logits=True)}
    losses.update({k: keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
                   for k in READING_OUTPUTS})
    weights = {"real": 1.0, **{k: reading_weight for k in READING_OUTPUTS}}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, gradient_accumulation_steps=accumulate if accumulate > 1 else None),
        loss=losses, loss_weights=weights,
        metrics={"real": [keras.metrics.BinaryAccuracy(threshold=0.0, name="acc")]},
    )
    return model


def discriminator_batch(rng: np.random.Generator, batch_kind: str, batch_size: int, generator,
                        level: int = 2, split: str = "train", mismatched_share: float = 0.5) -> tuple:
    """One training batch ``(inputs, targets)`` of fresh texts: ``"real"``, or ``"fake"``: the first
    ``mismatched_share`` of it mismatched, the rest generated. Introduced in 03_train_discriminator.
    """
    texts = [_sample_text(rng, level, split) for _ in range(batch_size)]
    if batch_kind == "real":
        return discriminator_examples(rng, texts, "real", generator, level, split)[:2]
    if batch_kind != "fake":
        raise ValueError(f"batch_kind must be one of {BATCH_KINDS}, got {batch_kind!r}")
    n = round(batch_size * mismatched_share)
    parts = [discriminator_examples(rng, part, kind, generator, level, split)
             for part, kind in ((texts[:n], "mismatched"), (texts[n:], "generated")) if part]
    return tuple({k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]} for i in (0, 1))


def discriminator_dataset(state: TrainingState, steps: int, batch_size: int, seed: int, generator,
                          mismatched_share: float = 0.5):
    """A finite dataset of ``steps`` batches for epoch ``state.epoch`` at ``state.level``,
    alternating real and fake (`discriminator_batch`). Seeded per epoch like `epoch_dataset`.
    Introduced in 03_train_discriminator.
    """
    def batches():
        rng = np.random.default_rng([seed, state.epoch])
        level = state.level
        for step in range(steps):
            yield discriminator_batch(rng, BATCH_KINDS[step % len(BATCH_KINDS)], batch_size, generator, level,
                                      mismatched_share=mismatched_share)

    signature = (
        {"image": tf.TensorSpec((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), tf.uint8),
         "chars": tf.TensorSpec((batch_size, MAX_CHARS), tf.int32),
         "spec": tf.TensorSpec((batch_size, SPEC_LENGTH), tf.int32)},
        {"real": tf.TensorSpec((batch_size, 1), tf.float32),
         "chars": tf.TensorSpec((batch_size, MAX_CHARS), tf.int32),
         **{k: tf.TensorSpec((batch_size,), tf.int32) for k in SPEC_KEYS}},
    )
    ds = _from_generator(batches, signature)
    return _prefetched(ds.apply(tf.data.experimental.assert_cardinality(steps)))


def discriminator_probabilities(model: keras.Model, inputs: dict, batch_size: int = 64) -> np.ndarray:
    """P(real) = sigmoid(logit) for a dict of inputs (numpy), in batches. Introduced in 03_train_discriminator."""
    n = len(inputs["chars"])
    out = np.empty(n, np.float32)
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in inputs.items()}
        out[i:i + batch_size] = np.asarray(model.predict_on_batch(batch)["real"])[:, 0]
    return 1.0 / (1.0 + np.exp(-out.astype(np.float64))).astype(np.float32)


def discriminator_test_set(generator, level: int = 2, split: str = "heldout", n: int = 500,
                           seed: int = 0) -> dict:
    """Seeded examples of every kind for the same ``n`` texts: ``{kind: (texts, shown, inputs)}``.

    The kinds differ only in what makes them fake. Introduced in 03_train_discriminator.
    """
    texts = sample_texts(n, level, seed=30_000 + seed + level, split=split)
    out = {}
    for k, kind in enumerate(KINDS):
        rng = np.random.default_rng([seed, level, k])
        inputs, _, shown = discriminator_examples(rng, texts, kind, generator, level, split)
        out[kind] = (texts, shown, inputs)
    return out


def evaluate_discriminator(model: keras.Model, test_set: dict) -> dict:
    """Accuracy on each kind of a `discriminator_test_set` (real must score P(real) > 0.5, fakes
    at most 0.5), overall (the kinds weighted equally) and per mismatch mode; and, with no
    threshold, how often the real example scores higher than the mismatched one of the same
    image (``real_above_mismatched``) and the generated one of the same text
    (``real_above_generated``; 0.5 = cannot tell). Returns
    ``{"accuracy": {...}, "p_real": {kind: array}}``. Introduced in 03_train_discriminator.
    """
    accuracy, p_real = {}, {}
    for kind, (texts, shown, inputs) in test_set.items():
        p = discriminator_probabilities(model, inputs)
        p_real[kind] = p
        correct = p > 0.5 if kind == "real" else p <= 0.5
        accuracy[kind] = float(correct.mean())
        if kind == "mismatched":
            modes = np.array([mismatch_mode(t, s) for t, s in zip(texts, shown)])
            for mode in MISMATCH_MODES:
                if (modes == mode).any():
                    accuracy[f"mismatched_{mode}"] = float(correct[modes == mode].mean())
    accuracy["overall"] = float(np.mean([accuracy[k] for k in test_set]))
    # Threshold-free: the same image (or text) scores higher as real than as each kind of fake.
    for kind in ("mismatched", "generated"):
        if "real" in p_real and kind in p_real:
            accuracy[f"real_above_{kind}"] = float(np.mean(p_real["real"] > p_real[kind]))
    accuracy["n"] = len(next(iter(test_set.values()))[0])
    return {"accuracy": accuracy, "p_real": p_real}


class DiscriminatorTrainingCallback(_EpochBookkeeping):
    """Per-epoch bookkeeping of `train_discriminator`: accuracy per kind on fixed validation
    examples (train texts at the current level, for the curriculum; held-out level-2 texts, for
    the record), the curriculum, the history JSON and an atomic checkpoint.
    Introduced in 03_train_discriminator.
    """
    def __init__(self, state: TrainingState, generator, checkpoint_dir: str | None,
                 history_path: str | None, history: list, batch_size: int, steps: int,
                 n_val: int = 96, seed: int = 0):
        super().__init__(state, checkpoint_dir, history_path, history, batch_size, steps)
        self.val = {level: discriminator_test_set(generator, level, "train", n_val, seed=1_000 + seed)
                    for level in D_MAX_EPOCHS_AT_LEVEL}
        self.heldout = discriminator_test_set(generator, max(LEVELS), "heldout", n_val, seed=2_000 + seed)

    def on_epoch_end(self, epoch, logs=None):

        st = self.state
        heldout = evaluate_discriminator(self.model, self.heldout)["accuracy"]
        row = self._row(epoch, logs, **{f"heldout_{k}": heldout[k] for k in (*KINDS, "overall")})
        passed = False
        if st.level in self.val:
            val = evaluate_discriminator(self.model, self.val[st.level])["accuracy"]
            row.update({f"val_{k}": val[k] for k in KINDS})
            passed = min(val["real"], val["mismatched"]) >= D_PROMOTE_ACC
        if logs is not None:
            logs.update({k: row[k] for k in ("heldout_real", "heldout_mismatched", "heldout_generated")})
        self.history.append(row)
        self._next_epoch(epoch, passed, D_MAX_EPOCHS_AT_LEVEL)
        _save_checkpoint(self.checkpoint_dir, self.model, st, self.history, self.history_path)


def train_discriminator(generator: keras.Model, out_path: str | None = DEFAULT_DISCRIMINATOR_PATH,
                        epochs: int = D_EPOCHS, steps_per_epoch: int = D_STEPS_PER_EPOCH,
                        batch_size: int = 32, seed: int = 0, learning_rate: float = 1e-3,
                        checkpoint_dir: str | None = None, verbose="auto", n_val: int = 96,
                        model: keras.Model | None = None, mismatched_share: float = 0.5):
    """Train a discriminator from scratch (or resume) against a fixed ``generator``.

    Batches come from `discriminator_dataset` (one kind per batch, the curriculum's level), the
    learning rate follows a cosine decay, and every epoch is checkpointed atomically to
    ``checkpoint_dir`` (default ``out_path`` + ``.ckpt``) so a restarted run resumes there, like
    `train_generator`. ``model``: an uncompiled model to train instead of `build_discriminator()`'s
    (e.g. other settings); ``mismatched_share``: the share of each fake batch that is mismatched
    (the rest is generated). At the end the model is saved without optimizer state to ``out_path``
    and its history next to it (``.history.json``). Returns ``(model, history)``.
    Introduced in 03_train_discriminator.
    """
    keras.utils.set_random_seed(seed)
    stem = os.path.splitext(out_path)[0] if out_path else None
    checkpoint_dir = checkpoint_dir or (stem + ".ckpt" if stem else None)
    history_path = stem + ".history.json" if stem else None
    state, history = TrainingState(), []
    if checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "state.json")):
        model, state, history = _load_checkpoint(checkpoint_dir)
    else:
        model = model or build_discriminator()
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=epochs * steps_per_epoch, alpha=0.01)
        compile_discriminator(model, schedule)
    _remove_stale_temporaries(checkpoint_dir)
    callback = DiscriminatorTrainingCallback(state, generator, checkpoint_dir, history_path, history,
                                             batch_size, steps_per_epoch, n_val=n_val, seed=seed)
    if state.epoch < epochs:
        model.fit(discriminator_dataset(state, steps_per_epoch, batch_size, seed, generator, mismatched_share),
                  epochs=epochs, initial_epoch=state.epoch, callbacks=[callback], verbose=verbose, shuffle=False)
    if out_path:
        export = keras.Model.from_config(model.get_config())  # the same model without optimizer state
        export.set_weights(model.get_weights())
        _atomic_write(out_path, export.save)
        _write_json(history_path, history)
    return model, history


def evaluate_discriminator_levels(model: keras.Model, generator: keras.Model, levels=(0, 1, 2),
                                  n: int = 500, seed: int = 0) -> list:
    """`evaluate_discriminator` on ``n`` seeded train texts and ``n`` held-out texts per level:
    one dict of accuracies per (level, split). Introduced in 03_train_discriminator.
    """
    return [{"level": level, "split": split,
             **evaluate_discriminator(model, discriminator_test_set(generator, level, split, n, seed))["accuracy"]}
            for level in levels for split in ("train", "heldout")]


def format_discriminator_evaluation(results) -> str:
    """The results of `evaluate_discriminator_levels` as a Markdown table. Introduced in 03_train_discriminator."""
    lines = ["| level | split | texts | real | mismatched | (chars / spec / both) | generated | overall "
             "| real above mismatched | real above generated |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda r, k: f"{100 * r[k]:.1f} %" if k in r else "-"  # noqa: E731
    for r in results:
        modes = " / ".join(pct(r, f"mismatched_{m}") for m in MISMATCH_MODES)
        lines.append(f"| {r['level']} | {r['split']} | {r['n']} | {pct(r, 'real')} | {pct(r, 'mismatched')} "
                     f"| {modes} | {pct(r, 'generated')} | {pct(r, 'overall')} "
                     f"| {pct(r, 'real_above_mismatched')} | {pct(r, 'real_above_generated')} |")
    return "\n".join(lines)


def plot_discriminator_history(history, path: str | None = None, threshold: float = 0.95):
    """Per-epoch accuracy on held-out level-2 real, mismatched and generated examples and overall
    (left), and the training losses (right), with curriculum level changes marked and the
    ``threshold`` drawn. Returns the figure; saves it to ``path`` if given.
    Introduced in 03_train_discriminator.
    """
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in (*KINDS, "overall"):
        axes[0].plot(epochs, [100 * r[f"heldout_{key}"] for r in history], label=key,
                     lw=2.5 if key == "overall" else 1.2)
    axes[0].axhline(100 * threshold, color="black", ls="--", lw=0.8)
    axes[0].set_ylabel("accuracy on held-out texts, level 2 (%)")
    axes[1].plot(epochs, [r["real_loss"] for r in history], label="real/fake loss (binary cross-entropy)")
    axes[1].plot(epochs, [r["chars_loss"] for r in history], label="chars reading loss")
    axes[1].set_yscale("log")
    for ax in axes:
        for prev, row in zip(history, history[1:]):
            if row["level"] != prev["level"]:
                ax.axvline(prev["epoch"] + 0.5, color="grey", ls=":")
                ax.text(prev["epoch"] + 0.5, 0.03, f" level {row['level']}", transform=ax.get_xaxis_transform(),
                        fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(history)} epochs, {history[-1]['images_seen']:,} training images")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80)
    return fig


def load_discriminator(path: str | None = None) -> keras.Model:
    """Load a discriminator saved as ``.keras``; by default the shipped ``models/discriminator.keras``.

    Introduced in 03_train_discriminator.
    """
    path = path or DEFAULT_DISCRIMINATOR_PATH
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no discriminator at {path}; train one with: python t2i_utils.py train-discriminator --out {path}")
    return keras.models.load_model(path, compile=False)


# =====================================================================================
# 10. Command line                                              (Introduced in 02_train_generator)
# =====================================================================================

def main(argv=None) -> int:
    """``python t2i_utils.py train-generator|evaluate-generator|generate|train-discriminator|evaluate-discriminator ...``;
    see ``--help``.

    Bad chars/spec exit with status 2 and a one-line message. Introduced in 02_train_generator.
    """
    parser = argparse.ArgumentParser(prog="python t2i_utils.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-generator", help="train the generator from scratch (or resume)")
    p.add_argument("--out", default=DEFAULT_GENERATOR_PATH)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=TRAINING_PRECISION, choices=("mixed_bfloat16", "float32"),
                   help="dtype policy of the layers while training (the saved model is float32)")
    p.add_argument("--kerned-share", type=float, default=KERNED_SHARE,
                   help="share of training texts drawn around a pair their font kerns")
    p.add_argument("--pair-units", type=int, default=PAIR_UNITS,
                   help="width of the generator's pair features (0: none)")
    p.add_argument("--eval-n", type=int, default=500, help="texts per level and split to evaluate (0: none)")
    p = sub.add_parser("evaluate-generator", help="exact metrics per level, train vs held-out")
    p.add_argument("--model", default=DEFAULT_GENERATOR_PATH)
    p.add_argument("-n", type=int, default=500, help="texts per level and split")
    p = sub.add_parser("train-discriminator", help="train the discriminator from scratch (or resume)")
    p.add_argument("--out", default=DEFAULT_DISCRIMINATOR_PATH)
    p.add_argument("--generator", default=DEFAULT_GENERATOR_PATH)
    p.add_argument("--epochs", type=int, default=D_EPOCHS)
    p.add_argument("--steps-per-epoch", type=int, default=D_STEPS_PER_EPOCH)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=500, help="texts per level and split to evaluate (0: none)")
    p = sub.add_parser("evaluate-discriminator", help="accuracy per kind and level, train vs held-out")
    p.add_argument("--model", default=DEFAULT_DISCRIMINATOR_PATH)
    p.add_argument("--generator", default=DEFAULT_GENERATOR_PATH)
    p.add_argument("-n", type=int, default=500, help="texts per level and split")
    p = sub.add_parser("generate", help="draw one text with the generator into a PNG")
    p.add_argument("chars")
    p.add_argument("spec")
    p.add_argument("-o", "--output", default="out.png")
    p.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    if args.command == "generate":
        try:
            validate_chars(args.chars)
            parse_spec(args.spec)
        except (TypeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        image = generate(load_generator(args.model), args.chars, args.spec)
        plt.imsave(args.output, image)
        print(f"wrote {args.output}")
        return 0
    if args.command == "train-generator":
        t0 = time.perf_counter()
        train_generator(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                        batch_size=args.batch_size, seed=args.seed, verbose=2, precision=args.precision,
                        kerned_share=args.kerned_share, pair_units=args.pair_units)
        print(f"trained in {time.perf_counter() - t0:.0f} s; saved {args.out}", flush=True)
        args.model, args.n = args.out, args.eval_n
        if not args.n:
            return 0
    if args.command in ("train-discriminator", "evaluate-discriminator"):
        generator = load_generator(args.generator)
        if args.command == "train-discriminator":
            t0 = time.perf_counter()
            train_discriminator(generator, args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                batch_size=args.batch_size, seed=args.seed, verbose=2)
            print(f"trained in {time.perf_counter() - t0:.0f} s; saved {args.out}", flush=True)
            args.model, args.n = args.out, args.eval_n
            if not args.n:
                return 0
        results = evaluate_discriminator_levels(load_discriminator(args.model), generator, n=args.n)
        _write_json(os.path.splitext(args.model)[0] + ".evaluation.json", results)
        print(format_discriminator_evaluation(results), flush=True)
        return 0
    results = evaluate_generator(load_generator(args.model), n=args.n)
    _write_json(os.path.splitext(args.model)[0] + ".evaluation.json", results)
    print(format_evaluation(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
