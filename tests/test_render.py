"""Rendering: the matplotlib reference, the fast path and their agreement (notebook 01)."""
import numpy as np
import pytest

import t2i_utils as u


def test_reference_render_shape_and_colours():
    img = u.render_matplotlib("4a", "color red, backgroundcolor blue")
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert tuple(img[0, 0]) == (0, 0, 255)  # blue background in the corner
    assert (np.all(img == (255, 0, 0), axis=-1)).sum() > 50  # solid red text pixels


def test_fonts_come_from_matplotlib_and_differ():
    import matplotlib
    paths = {u.font_file(*f) for f in u.FONTS}
    assert len(paths) == 12
    assert all(p.startswith(matplotlib.get_data_path()) and "DejaVu" in p for p in paths)
    masks = {f: u.glyph_mask("Rag", *f).tobytes() for f in u.FONTS}
    assert len(set(masks.values())) == 12


@pytest.mark.parametrize("font", u.FONTS)
def test_widest_string_fits_in_every_font(font):
    from matplotlib.ft2font import FT2Font
    ft = FT2Font(u.font_file(*font))
    widest = max(u.ALPHABET, key=lambda c: ft.load_char(ord(c)).horiAdvance)
    for chars in (widest * 3, "WWW", "MMM", "jgQ"):
        ys, xs = np.nonzero(u.glyph_mask(chars, *font))
        assert xs.min() >= 2 and xs.max() <= 125, (font, chars, xs.min(), xs.max())
        assert ys.min() >= 2 and ys.max() <= 125, (font, chars, ys.min(), ys.max())


def test_fast_render_matches_reference_on_random_texts():
    rng = np.random.default_rng(0)
    texts = [u.sample_text(rng, level=2) for _ in range(150)]
    # Every font with every ordered colour pair at least once.
    pairs = [(fg, bg) for fg in u.COLORS for bg in u.COLORS if fg != bg]
    for i, (fg, bg) in enumerate(pairs):
        family, weight, style = u.FONTS[i % 12]
        texts.append(("Qg" + u.ALPHABET[i], f"color {fg}, backgroundcolor {bg}, fontfamily {family}, "
                                           f"fontweight {weight}, fontstyle {style}"))
    worst = 0
    for chars, spec in texts:
        diff = np.abs(u.render(chars, spec).astype(int) - u.render_matplotlib(chars, spec))
        worst = max(worst, int(diff.max()))
    assert worst <= 2, worst


def test_direct_glyph_drawing_equals_a_text_artist_bit_for_bit():
    # The fast path places and draws glyphs without a Text artist; it must not move a pixel.
    rng = np.random.default_rng(1)
    # "ffi" and "fl" are ligatures in the serif and sans-serif fonts: fewer glyphs than characters
    # (and 3-character strings holding one, "afl", "fia", are laid out whole, not pair by pair).
    texts = [(c, *font) for c in ("WWW", "gjy", "Tw", "Twa", "1", "qA", "ffi", "fl", "afl", "fia") for font in u.FONTS]
    for _ in range(120):
        chars, spec = u.sample_text(rng, level=2)
        d = u.parse_spec(spec)
        texts.append((chars, d["fontfamily"], d["fontweight"], d["fontstyle"]))
    for key in texts:
        np.testing.assert_array_equal(u._MASK_RENDERER.draw(*key)[0], u._text_artist_coverage(*key),
                                      err_msg=str(key))


def test_render_is_not_trivially_blank():
    img = u.render("W", "color black, backgroundcolor white")
    assert img.min() == 0 and img.max() == 255
    assert 0.01 < (img[..., 0] < 128).mean() < 0.2


@pytest.mark.parametrize("size", [16, 32, 64])
def test_smaller_sizes_are_area_downsampled(size):
    spec = "color yellow, backgroundcolor magenta, fontfamily serif"
    small = u.render("Ab3", spec, size=size).astype(float)
    big = u.render("Ab3", spec).astype(float)
    f = 128 // size
    expected = big.reshape(size, f, size, f, 3).mean(axis=(1, 3))
    assert small.shape == (size, size, 3)
    assert np.abs(small - expected).max() <= 1.0


@pytest.mark.parametrize("size", [0, 48, 100, 256, "32"])
def test_bad_sizes_raise(size):
    with pytest.raises(ValueError, match="size must divide 128"):
        u.render("a", "", size=size)


def test_render_rejects_bad_input_clearly():
    with pytest.raises(ValueError, match="unknown value 'purple'"):
        u.render("a", "color purple")
    with pytest.raises(ValueError, match="at most 3"):
        u.render_matplotlib("abcd", "")


def test_unit_range_round_trip():
    img = u.render("x", "color green, backgroundcolor white")
    x = u.to_unit_range(img)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert (u.to_uint8(x) == img).all()


def test_pyplot_baseline_draws_the_same_picture():
    for chars, spec in u.sample_texts(20, 2, seed=11):
        a = u.render_pyplot_per_figure(chars, spec).astype(int)
        assert a.shape == (128, 128, 3)
        assert np.abs(a - u.render_matplotlib(chars, spec)).max() <= 2


def test_ink_box_holds_all_ink_and_is_tight():
    # Colouring looks up only the box that `_MaskRenderer.draw` reports; ink outside it would be lost.
    texts = u.sample_texts(400, 2, seed=5) + [(c, "") for c in ("WWW", "gjy", "Twa", "afl", "1")]
    for chars, spec in texts:
        d = u.as_spec(spec)
        mask, (row0, row1, col0, col1) = u._MASK_RENDERER.draw(chars, d["fontfamily"], d["fontweight"], d["fontstyle"])
        ys, xs = np.nonzero(mask)
        assert row0 <= ys.min() and ys.max() < row1 and col0 <= xs.min() and xs.max() < col1, (chars, d)
        assert ys.min() - row0 <= 1 and row1 - 1 - ys.max() <= 1, (chars, d)
        assert xs.min() - col0 <= 1 and col1 - 1 - xs.max() <= 1, (chars, d)


def test_render_colours_every_pixel_from_the_mask():
    # Background first, then the lookup over the ink box: the same image as the lookup everywhere.
    rng = np.random.default_rng(3)
    for _ in range(300):
        chars, spec = u.sample_text(rng, level=2)
        d = u.parse_spec(spec)
        table = u._colour_table(d["color"], d["backgroundcolor"])
        expected = table[u.glyph_mask(chars, d["fontfamily"], d["fontweight"], d["fontstyle"])]
        np.testing.assert_array_equal(u.render(chars, spec), expected, err_msg=f"{chars} {spec}")
