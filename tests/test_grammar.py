"""The text grammar, its encoders and the bad-input messages (notebook 01)."""
import numpy as np
import pytest

import t2i_utils as u


def test_alphabet_and_colors():
    assert len(u.ALPHABET) == 62 and len(set(u.ALPHABET)) == 62
    assert u.COLORS == ("blue", "green", "red", "cyan", "magenta", "yellow", "black", "white")
    # matplotlib's green is #008000, about half intensity, not (0, 1, 0)
    assert tuple(u.color_rgb("green") * 255) == (0, 128, 0)
    assert len(u.FONTS) == 12


@pytest.mark.parametrize("spec, expected", [
    ("", {}),
    ("color red, backgroundcolor blue", {"color": "red", "backgroundcolor": "blue"}),
    ("BackgroundColor Blue,color RED", {"color": "red", "backgroundcolor": "blue"}),
    ("  fontstyle italic ,  fontfamily   monospace ", {"fontstyle": "italic", "fontfamily": "monospace"}),
    ("fontweight bold, color white, backgroundcolor black, fontfamily serif, fontstyle normal",
     {"fontweight": "bold", "color": "white", "backgroundcolor": "black", "fontfamily": "serif"}),
])
def test_parse_spec_canonical(spec, expected):
    d = u.parse_spec(spec)
    assert list(d) == list(u.SPEC_KEYS)
    assert d == dict(u.SPEC_DEFAULTS, **expected)


@pytest.mark.parametrize("chars, message", [
    ("", "empty"),
    ("abcd", "at most 3"),
    ("a b", "' ' (whitespace) at position 1"),
    ("\t", "whitespace"),
    ("é", "U+00E9"),
    ("4-", "'-'"),
    ("Ω", "U+03A9"),
])
def test_bad_chars_name_the_token(chars, message):
    with pytest.raises(ValueError) as e:
        u.validate_chars(chars)
    assert message in str(e.value)
    assert "0-9, a-z, A-Z" in str(e.value) or "at most" in str(e.value)


@pytest.mark.parametrize("bad", [None, 4, b"4a", ["4", "a"]])
def test_non_string_inputs_raise_type_error(bad):
    with pytest.raises(TypeError, match="must be a str"):
        u.validate_chars(bad)
    with pytest.raises(TypeError, match="must be a str"):
        u.parse_spec(bad)


@pytest.mark.parametrize("spec, message", [
    ("colour red", "unknown key 'colour'; allowed keys: color, backgroundcolor"),
    ("color rouge", "unknown value 'rouge' for 'color'; allowed: blue, green"),
    ("fontfamily arial", "allowed: sans-serif, serif, monospace"),
    ("fontweight heavy", "allowed: normal, bold"),
    ("color red, color blue", "'color' is given more than once"),
    ("color", "'color' is not a 'key value' pair"),
    ("color red blue", "'color red blue' is not a 'key value' pair"),
    ("color red,", "pair 2 is empty"),
    (",color red", "pair 1 is empty"),
    ("color red,, fontstyle italic", "pair 2 is empty"),
    ("color red; backgroundcolor blue", "character ';' at position 9"),
    ("color:red", "character ':' at position 5"),
    ("color white", "both 'white'"),
    ("color red, backgroundcolor red", "both 'red'"),
])
def test_bad_spec_names_the_token(spec, message):
    with pytest.raises(ValueError) as e:
        u.parse_spec(spec)
    assert message in str(e.value)


def test_format_spec_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(200):
        chars, spec = u.sample_text(rng, level=2)
        d = u.parse_spec(spec)
        assert u.parse_spec(u.format_spec(d)) == d
        assert u.parse_spec(u.format_spec(d, full=True)) == d
    assert u.format_spec(u.parse_spec("")) == ""


def test_chars_encoder_round_trip_and_padding():
    for chars in ["0", "4a", "ZzY", "W", "09"]:
        ids = u.encode_chars(chars)
        assert ids.dtype == np.int32 and ids.shape == (u.MAX_CHARS,)
        assert (ids[len(chars):] == u.PAD_ID).all() and (ids[: len(chars)] > 0).all()
        assert u.decode_chars(ids) == chars
    assert u.encode_chars("0")[0] == 1 and u.encode_chars("Z")[0] == 62


def test_spec_encoder_canonical_order_and_round_trip():
    ids = u.encode_spec("color red")
    assert ids.shape == (u.SPEC_LENGTH,)
    tokens = [u.SPEC_VOCAB[i] for i in ids]
    assert tokens[::2] == list(u.SPEC_KEYS)
    assert tokens[1::2] == ["red", "white", "sans-serif", "normal", "normal"]
    # Equal specs written differently encode identically.
    assert (u.encode_spec("Backgroundcolor white, color RED, fontweight normal") == ids).all()
    rng = np.random.default_rng(2)
    for _ in range(200):
        _, spec = u.sample_text(rng, level=2)
        assert u.decode_spec(u.encode_spec(spec)) == u.parse_spec(spec)


def test_encode_texts_validates_before_tensorflow():
    chars_ids, spec_ids = u.encode_texts([("4a", "color red"), ("b", "")])
    assert chars_ids.shape == (2, 3) and spec_ids.shape == (2, 10)
    with pytest.raises(ValueError, match="position 0"):
        u.encode_texts([("4a", "color red"), ("!", "")])
