"""The generator: model, API, metrics, training loop, command line and widget (notebook 02)."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import t2i_utils as u

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def untrained():
    keras.utils.set_random_seed(0)
    return u.build_generator()


def test_model_shapes_and_size(untrained):
    assert untrained.output_shape == (None, 128, 128, 3)
    assert {i.name for i in untrained.inputs} == {"chars", "spec"}
    assert untrained.count_params() < 4_000_000  # about 14 MB of float32 weights


def test_pair_features_read_each_character_with_its_right_neighbour():
    # The `pairs` layer sees (char i, char i+1) at position i, the last char next to padding.
    keras.utils.set_random_seed(0)
    model = u.build_generator(pair_units=16)
    pairs = keras.Model(model.inputs, model.get_layer("pairs").output)
    chars, spec = u.encode_texts([("abc", ""), ("axc", ""), ("ab", "")])
    out = np.asarray(pairs({"chars": chars, "spec": spec}))
    assert out.shape == (3, u.MAX_CHARS, 16)
    changed = lambda i, j: [not np.allclose(out[i, k], out[j, k]) for k in range(u.MAX_CHARS)]
    assert changed(0, 1) == [True, True, False]  # the middle char is in pairs 0 and 1
    assert changed(0, 2) == [False, True, True]  # the last char is in pairs 1 and 2
    assert "pairs" not in [layer.name for layer in u.build_generator(pair_units=0).layers]


def test_save_and_load_give_identical_outputs(untrained, tmp_path):
    path = str(tmp_path / "g.keras")
    untrained.save(path)
    loaded = u.load_generator(path)
    texts = u.sample_texts(4, 2, seed=0)
    np.testing.assert_array_equal(u.generate_batch(untrained, texts), u.generate_batch(loaded, texts))


def test_generate_returns_an_image_and_rejects_bad_input_first(untrained):
    img = u.generate(untrained, "4a", "color red, backgroundcolor blue")
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert u.generate_batch(untrained, [("a", ""), ("bc", "color blue")]).shape == (2, 128, 128, 3)
    with pytest.raises(ValueError, match="at most 3"):
        u.generate(untrained, "abcd", "")
    with pytest.raises(ValueError, match="unknown key 'size'"):
        u.generate(untrained, "ab", "size 12")
    with pytest.raises(TypeError):
        u.generate(untrained, 12, "")


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-generator"):
        u.load_generator(str(tmp_path / "none.keras"))


def test_metrics_score_truth_100_and_wrong_renderings_0():
    texts = u.sample_texts(30, 2, seed=4)
    truth = u.score_images(texts, u.render_batch(texts))
    for key in ("chars_ok", "font_ok", "colour_ok"):
        assert truth[key].all(), key
    assert truth["mae_mean"] == 0.0
    wrong_char = [(u.chars_substitutions(c)[5], s) for c, s in texts]
    assert not u.score_images(texts, u.render_batch(wrong_char))["chars_ok"].any()
    other_font = []
    for c, s in texts:
        d = u.parse_spec(s)
        f = u.FONTS[(u.FONTS.index((d["fontfamily"], d["fontweight"], d["fontstyle"])) + 1) % 12]
        other_font.append((c, dict(d, fontfamily=f[0], fontweight=f[1], fontstyle=f[2])))
    assert not u.score_images(texts, u.render_batch(other_font))["font_ok"].any()
    swapped = [(c, dict(u.parse_spec(s), color=u.parse_spec(s)["backgroundcolor"],
                        backgroundcolor=u.parse_spec(s)["color"])) for c, s in texts]
    assert not u.score_images(texts, u.render_batch(swapped))["colour_ok"].any()


def test_colour_estimate_on_thin_glyphs_every_pair():
    for fg in u.COLORS:
        for bg in u.COLORS:
            if fg != bg:
                for chars in ("i", "l", "1"):
                    assert u.estimate_colours(u.render(chars, f"color {fg}, backgroundcolor {bg}")) == (fg, bg)


def test_substitutions():
    subs = u.chars_substitutions("ab")
    assert len(subs) == 2 * 61 and "ab" not in subs and len(set(subs)) == len(subs)
    assert u.chars_substitutions("7", "0123456789") == [d for d in "012345689"]


def test_epoch_data_is_a_function_of_seed_epoch_and_level():
    state = u.TrainingState(epoch=3, level=1)
    a = list(u.epoch_dataset(state, steps=2, batch_size=4, seed=0, size=16))
    b = list(u.epoch_dataset(state, steps=2, batch_size=4, seed=0, size=16))
    np.testing.assert_array_equal(a[1][1].numpy(), b[1][1].numpy())
    state.epoch = 4
    c = list(u.epoch_dataset(state, steps=2, batch_size=4, seed=0, size=16))
    assert not np.array_equal(a[0][1].numpy(), c[0][1].numpy())


def test_training_writes_artifacts_and_resumes(tmp_path):
    out = str(tmp_path / "g.keras")
    kwargs = dict(steps_per_epoch=2, batch_size=4, seed=0, verbose=0)
    _, history = u.train_generator(out, epochs=2, **kwargs)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["images_seen"] == 16
    for suffix in (".keras", ".history.json", ".progress.npz", ".ckpt/model.keras", ".ckpt/state.json"):
        assert os.path.exists(str(tmp_path / "g") + suffix), suffix
    assert not [f for f in os.listdir(tmp_path / "g.ckpt") if ".tmp" in f]  # no half-written file
    state = json.load(open(tmp_path / "g.ckpt" / "state.json"))["state"]
    assert state["epoch"] == 2
    # The same command with more epochs resumes from the checkpoint instead of starting over.
    _, history = u.train_generator(out, epochs=3, **kwargs)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    grids = np.load(str(tmp_path / "g.progress.npz"))["grids"]
    assert grids.shape == (3, len(u.PROGRESS_TEXTS), 64, 64, 3)
    assert json.load(open(tmp_path / "g.history.json")) == history


def test_bfloat16_training_keeps_float32_weights_and_output(tmp_path):
    keras.utils.set_random_seed(0)
    model = u.compile_generator(u.build_generator(dtype="mixed_bfloat16"))
    assert model.get_layer("up1").compute_dtype == "bfloat16"
    assert model.get_layer("coverage_maps").compute_dtype == "float32" and model.output.dtype == "float32"
    assert {str(v.dtype) for v in model.weights} == {"float32"}
    x, y = u.sample_batch(np.random.default_rng(0), 4, level=2)
    losses = [float(model.train_on_batch(x, y)[0]) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The float32 model takes the trained weights; bfloat16 keeps 8 significant bits, so the
    # two draw nearly, not exactly, the same pixels.
    export = u.build_generator()
    export.set_weights(model.get_weights())
    diff = np.abs(np.tanh(export.predict_on_batch(x)) - np.tanh(np.asarray(model.predict_on_batch(x), np.float32)))
    assert 0 < diff.mean() < 0.01
    # train_generator with bfloat16 arithmetic saves a float32 model of the same architecture.
    out = str(tmp_path / "g.keras")
    trained, _ = u.train_generator(out, epochs=1, steps_per_epoch=2, batch_size=4, verbose=0,
                                   precision="mixed_bfloat16", pair_units=8, kerned_share=0.5)
    assert trained.get_layer("up1").compute_dtype == "bfloat16"
    saved = u.load_generator(out)
    assert saved.get_layer("up1").compute_dtype == "float32"
    assert saved.get_layer("pairs").output.shape == (None, u.MAX_CHARS, 8)
    for a, b in zip(saved.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "t2i_utils.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("chars, spec, token", [("a b", "", "' '"), ("abcd", "", "at most 3"),
                                                ("ab", "color pink", "'pink'")])
def test_cli_bad_input_exits_2_with_one_line(chars, spec, token):
    result = run_cli("generate", chars, spec, "-o", os.devnull)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and token in lines[-1]
    assert "Traceback" not in result.stderr


def test_cli_generate_writes_a_png(untrained, tmp_path):
    model = str(tmp_path / "g.keras")
    untrained.save(model)
    png = str(tmp_path / "out.png")
    result = run_cli("generate", "4a", "color red, backgroundcolor blue", "-o", png, "--model", model)
    assert result.returncode == 0, result.stderr
    import matplotlib.pyplot as plt
    assert plt.imread(png).shape[:2] == (128, 128)


def test_widget_updates_and_keeps_last_image_on_bad_input(untrained):
    w = u.GeneratorWidget(untrained, chars="4a", spec="color red, backgroundcolor blue")
    assert w.message.value == "" and w.images["generated"].value[:4] == b"\x89PNG"
    before = {k: i.value for k, i in w.images.items()}
    w.chars.value = "Zq"
    assert w.images["true"].value != before["true"]
    good = {k: i.value for k, i in w.images.items()}
    w.spec.value = "color red, color blue"
    assert "more than once" in w.message.value
    assert {k: i.value for k, i in w.images.items()} == good
    w.spec.value = "color red, backgroundcolor blue"
    assert w.message.value == ""
    w.dropdowns["fontfamily"].value = "serif"
    assert w.spec.value == "color red, backgroundcolor blue, fontfamily serif"
    assert w.images["true"].value != good["true"]
    assert repr(w) == "GeneratorWidget(chars='Zq', spec='color red, backgroundcolor blue, fontfamily serif')"


def test_shipped_generator():
    path = u.DEFAULT_GENERATOR_PATH
    assert os.path.getsize(path) < 20 * 2 ** 20
    generator = u.load_generator()
    texts = u.sample_texts(40, 2, seed=123, split="heldout")
    scores = u.score_images(texts, u.generate_batch(generator, texts))
    assert scores["mae_mean"] < 0.03 and scores["colour_ok_mean"] == 1.0
    evaluation = json.load(open(os.path.splitext(path)[0] + ".evaluation.json"))
    assert {(r["level"], r["split"]) for r in evaluation} == {(l, s) for l in u.LEVELS for s in ("train", "heldout")}
    # The bar of the generator issue for level 2 held-out texts (the shipped weights: chars 100 %).
    row = next(r for r in evaluation if (r["level"], r["split"]) == (2, "heldout"))
    assert row["n"] >= 500 and row["mae"] <= 0.015 and row["font_acc"] >= 0.95 and row["colour_acc"] == 1.0
    assert row["chars_acc"] >= 0.99


def test_shipped_generator_draws_kerned_pairs():
    # DejaVu Sans (regular and bold oblique) pulls `w` 5.5 / 4.6 px towards `T`. Weights trained on uniform texts
    # drew the pair unkerned and missed `Tw` (held out) and the training strings around it in three of these specs.
    specs = ["color cyan, backgroundcolor blue, fontweight bold, fontstyle italic",
             "color green, backgroundcolor red, fontfamily serif",
             "color black, backgroundcolor blue", "color yellow, backgroundcolor black"]
    assert u.kerned_pairs()[("T", "w")] < -5 and u.kerned_pairs("sans-serif", "bold", "italic")[("T", "w")] < -4
    texts = [(chars, spec) for chars in ("Tw", "aTw", "Tw8", "oTw") for spec in specs]
    scores = u.score_images(texts, u.generate_batch(u.load_generator(), texts))
    assert scores["chars_ok"].all(), [t for t, ok in zip(texts, scores["chars_ok"]) if not ok]
