"""Sampling, curriculum levels, the held-out rule and the tf.data pipeline (notebook 01)."""
import itertools

import numpy as np
import pytest

import t2i_utils as u


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    assert u.sample_texts(50, 2, seed=3) == u.sample_texts(50, 2, seed=3)
    assert u.sample_texts(50, 2, seed=3) != u.sample_texts(50, 2, seed=4)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_levels_respect_their_rules(level):
    texts = u.sample_texts(600, level, seed=level)
    lengths = {len(c) for c, _ in texts}
    for chars, spec in texts:
        u.validate_chars(chars)
        d = u.parse_spec(spec)  # also rejects text colour == background colour
        assert d["color"] != d["backgroundcolor"]
        assert not u.is_held_out(chars)
        if level == 0:
            assert len(chars) == 2 and chars.isdigit()
        if level < 2:
            assert spec.startswith("color ") and "font" not in spec
    if level == 0:
        assert lengths == {2}
    else:
        assert lengths == {1, 2, 3}
    if level == 2:
        fonts = {tuple(u.parse_spec(s)[k] for k in ("fontfamily", "fontweight", "fontstyle"))
                 for _, s in texts}
        assert fonts == set(u.FONTS)


def test_held_out_rule():
    assert u.held_out_strings(0, 2) == ("29", "37", "40", "88")
    assert u.held_out_strings(1, 1) == ()
    n3 = len(u.held_out_strings(1, 3))
    assert 0.015 < n3 / 62 ** 3 < 0.025
    for level in (0, 1, 2):
        held = u.sample_texts(200, level, seed=5, split="heldout")
        assert all(u.is_held_out(c) for c, _ in held)
    with pytest.raises(ValueError, match="split"):
        u.sample_texts(1, 1, split="test")


def test_combination_counts_match_enumeration_at_level_0():
    c = u.count_combinations(0)
    pairs = [(a, b) for a, b in itertools.product(u.COLORS, repeat=2) if a != b]
    digits2 = ["".join(p) for p in itertools.product("0123456789", repeat=2)]
    assert c["texts"] == len(digits2) * len(pairs) == 5600
    assert c["held_out_texts"] == 4 * 56
    assert u.count_combinations(1)["chars"] == 62 + 62 ** 2 + 62 ** 3
    assert u.count_combinations(2)["texts"] == u.count_combinations(1)["texts"] * 12


def test_sampled_colour_pairs_cover_all_56():
    texts = u.sample_texts(3000, 1, seed=0)
    pairs = {(u.parse_spec(s)["color"], u.parse_spec(s)["backgroundcolor"]) for _, s in texts}
    assert len(pairs) == 56


def test_training_pipelines_switch_tf_data_autotuning_off():
    # With autotuning on, whole fit() calls ran at half speed on 2 cores (benchmarks/run.py counts them).
    state = u.TrainingState(level=1)
    for ds in (u.make_dataset(batch_size=4, level=1, size=32), u.epoch_dataset(state, 2, 4, seed=0, size=32)):
        assert ds.options().autotune.enabled is False
        assert len(list(ds.take(2))) == 2  # and the options leave the batches flowing


def test_dataset_batches_shapes_range_and_determinism():
    ds = u.make_dataset(batch_size=4, level=1, seed=7, size=32)
    inputs, images = next(iter(ds))
    chars_ids, spec_ids = inputs["chars"], inputs["spec"]
    assert chars_ids.shape == (4, u.MAX_CHARS) and spec_ids.shape == (4, u.SPEC_LENGTH)
    assert images.shape == (4, 32, 32, 3) and images.dtype.name == "float32"
    assert float(images.numpy().min()) >= -1 and float(images.numpy().max()) <= 1
    inputs2, im2 = next(iter(u.make_dataset(batch_size=4, level=1, seed=7, size=32)))
    assert (inputs2["chars"].numpy() == chars_ids.numpy()).all() and (im2.numpy() == images.numpy()).all()
    # The images are the renderings of the encoded texts.
    texts = [(u.decode_chars(c), u.format_spec(u.decode_spec(s)))
             for c, s in zip(chars_ids.numpy(), spec_ids.numpy())]
    np.testing.assert_array_equal(u.to_unit_range(u.render_batch(texts, 32)), images.numpy())


def test_curriculum_level_is_read_at_every_batch():
    curriculum = u.Curriculum(0)
    batches = u.batch_generator(16, curriculum, seed=0, size=16)
    inputs, _ = next(batches)
    assert all(len(u.decode_chars(c)) == 2 for c in inputs["chars"])
    curriculum.level = 2
    inputs, _ = next(batches)
    families = {u.decode_spec(s)["fontfamily"] for s in inputs["spec"]}
    assert len(families) > 1


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sample_batch_equals_sampling_encoding_and_rendering_text(level, split):
    # sample_batch keeps specs as dicts (no parsing); it must give exactly what the public text
    # path gives for the same draws: sample_text, then encode_texts and render_batch.
    x, images = u.sample_batch(np.random.default_rng(level), 24, level, split=split, as_uint8=True)
    rng = np.random.default_rng(level)
    texts = [u.sample_text(rng, level, split) for _ in range(24)]
    chars_ids, spec_ids = u.encode_texts(texts)
    np.testing.assert_array_equal(x["chars"], chars_ids)
    np.testing.assert_array_equal(x["spec"], spec_ids)
    np.testing.assert_array_equal(images, np.stack([u.render(c, s) for c, s in texts]))
    assert len({s for _, s in texts}) > 1


@pytest.mark.parametrize("font", [("sans-serif", "normal", "normal"), ("serif", "bold", "italic")])
def test_kerned_pairs_are_what_the_renderer_applies(font):
    # The second glyph of every pair sits at the first one's advance plus the pair's kerning.
    from matplotlib.backends.backend_agg import get_hinting_flag
    from matplotlib.font_manager import get_font
    f = get_font(u.font_file(*font))
    f.set_size(u.FONT_SIZE, u.DPI)
    kerned = u.kerned_pairs(*font)
    checked = 0
    for a in u.ALPHABET:
        advance = f.load_char(ord(a), flags=get_hinting_flag()).horiAdvance / 64
        for b in u.ALPHABET:
            glyphs = u._MASK_RENDERER._short_layout(u.font_file(*font), a + b, get_hinting_flag())
            if len(glyphs) == 2:  # "ff", "fi" and "fl" are one ligature glyph
                x = glyphs[1][2]  # where the renderer puts the second glyph
                assert x - advance == pytest.approx(kerned.get((a, b), 0.0), abs=1e-6), a + b
                checked += 1
    assert checked > 3800 and 50 < len(kerned) < 200
    assert kerned.get(("T", "v"), 0.0) == 0.0 and u.kerned_pairs()[("T", "w")] < -5
    assert u.kerned_pairs("monospace", "bold", "italic") == {}


@pytest.mark.parametrize("level", [1, 2])
def test_kerned_texts_hold_a_pair_their_font_kerns(level):
    rng = np.random.default_rng(level)
    texts = [u.sample_kerned_text(rng, level) for _ in range(300)]
    fonts = set()
    for chars, spec in texts:
        font = (spec["fontfamily"], spec["fontweight"], spec["fontstyle"])
        fonts.add(font)
        kerned = u.kerned_pairs(*font)
        assert not u.is_held_out(chars) and 1 <= len(chars) <= u.MAX_CHARS
        assert spec["color"] != spec["backgroundcolor"]
        if kerned:
            assert any((a, b) in kerned for a, b in zip(chars, chars[1:])), (chars, font)
    assert len(fonts) == (12 if level == 2 else 1)
    assert len({c for c, _ in texts}) > 200  # spread over many pairs and neighbours


def test_kerned_share_of_a_batch():
    def kerned_flags(x, skip_monospace):
        texts = [(u.decode_chars(c), u.decode_spec(s)) for c, s in zip(x["chars"], x["spec"])]
        return [any(p in u.kerned_pairs(s["fontfamily"], s["fontweight"], s["fontstyle"]) for p in zip(c, c[1:]))
                for c, s in texts if not (skip_monospace and s["fontfamily"] == "monospace")]

    x, _ = u.sample_batch(np.random.default_rng(0), 64, 2, size=16, kerned_share=1.0)
    kerned = kerned_flags(x, skip_monospace=True)
    assert len(kerned) > 30 and all(kerned)
    x, _ = u.sample_batch(np.random.default_rng(0), 64, 2, size=16, kerned_share=0.0)
    assert np.mean(kerned_flags(x, skip_monospace=False)) < 0.3  # uniform draws rarely hold a kerned pair
    with pytest.raises(ValueError, match="train split only"):
        u.sample_batch(np.random.default_rng(0), 4, 2, split="heldout", kerned_share=0.5)


def _choice_reference_draw(rng, level, split):
    """`_sample_text`'s train draw as first written, with ``rng.choice``: the stream to keep."""
    alphabet, lengths = u._level_alphabet_and_lengths(level)
    n = int(rng.choice(lengths))
    while True:
        chars = "".join(rng.choice(list(alphabet), n))
        if not u.is_held_out(chars):
            break
    bg = u.COLORS[int(rng.integers(len(u.COLORS)))]
    fg = bg
    while fg == bg:
        fg = u.COLORS[int(rng.integers(len(u.COLORS)))]
    font = u.FONTS[int(rng.integers(len(u.FONTS)))] if level == 2 else None
    return chars, fg, bg, font


@pytest.mark.parametrize("level", [0, 1, 2])
def test_sampling_draws_what_rng_choice_drew(level):
    # `_random_chars` replaced rng.choice for speed; the data stream of every seed must not change
    # (the shipped weights were trained on it).
    a, b = np.random.default_rng(level), np.random.default_rng(level)
    for _ in range(2000):
        chars, spec = u._sample_text(a, level, "train")
        font = (spec["fontfamily"], spec["fontweight"], spec["fontstyle"]) if level == 2 else None
        assert (chars, spec["color"], spec["backgroundcolor"], font) == _choice_reference_draw(b, level, "train")
    rng = np.random.default_rng(7)
    assert u._random_chars(np.random.default_rng(7), u.ALPHABET, 3) == "".join(rng.choice(list(u.ALPHABET), 3))


def test_reuse_freed_memory_stops_page_faults_on_batch_sized_buffers():
    resource = pytest.importorskip("resource")
    if not u.reuse_freed_memory():
        pytest.skip("needs glibc's mallopt")

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            # One uint8 batch of images as the pipeline yields it, 1.5 MiB: below the 4 MiB from
            # which numpy asks for transparent huge pages (a 6 MiB float batch got them in one CI
            # run: 76 faults), so a fresh mapping is faulted in 4 KiB page by page.
            np.ones((32, 128, 128, 3), np.uint8)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults()  # the heap grows once
    assert faults() < 300
    # TensorFlow's setting (what a from_generator iterator leaves): every buffer is mapped anew.
    mallopt = u._libc_mallopt()
    mallopt(u._M_TRIM_THRESHOLD, 128 << 10)
    mallopt(u._M_MMAP_THRESHOLD, 128 << 10)
    try:
        assert faults() > 2000  # 20 x 384 pages
    finally:
        u.reuse_freed_memory()
