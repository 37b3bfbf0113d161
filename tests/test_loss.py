"""The cross-entropy made for tanh (notebook 00)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import t2i_utils as u

H = np.linspace(-8, 8, 41)
Y = np.array([-1.0, -0.6, 0.0, 0.3, 1.0])


def grid(dtype="float64"):
    h, y = np.meshgrid(H, Y)
    return h.astype(dtype), y.astype(dtype)


def test_stable_equals_naive_plus_log2():
    h, y = grid()
    stable = np.asarray(u.tanh_cross_entropy(y, h))
    naive = np.asarray(u.naive_tanh_cross_entropy(y, np.tanh(h)))
    np.testing.assert_allclose(stable, naive + np.log(2), rtol=1e-9, atol=1e-9)


def test_equals_keras_binary_crossentropy_with_rescaled_targets_and_logits():
    h, y = grid("float32")
    bce = keras.ops.binary_crossentropy((1 + y) / 2, 2 * h, from_logits=True)
    np.testing.assert_allclose(np.asarray(u.tanh_cross_entropy(y, h)), np.asarray(bce),
                               rtol=1e-5, atol=1e-6)


def test_minimum_is_at_the_target():
    y = np.float64(0.3)
    h = np.linspace(-3, 3, 6001)
    loss = np.asarray(u.tanh_cross_entropy(np.full_like(h, y), h))
    assert abs(np.tanh(h[loss.argmin()]) - y) < 1e-3


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_finite_for_huge_logits(dtype):
    h = np.array([-1e4, -300, -20, 0, 20, 300, 1e4], dtype)
    for yv in (-1.0, 0.0, 1.0):
        y = np.full_like(h, yv)
        loss = np.asarray(u.tanh_cross_entropy(y, h))
        assert loss.dtype == np.dtype(dtype) and np.isfinite(loss).all()
        # With y = sign(h) the loss vanishes; with y = -sign(h) it grows like 2|h|.
    assert float(u.tanh_cross_entropy(np.array([1.0], dtype), np.array([1e4], dtype))[0]) == 0.0


def test_naive_form_breaks_in_float32():
    p = np.tanh(np.array([20.0, -20.0], np.float32))
    naive = np.asarray(u.naive_tanh_cross_entropy(np.array([-1.0, 1.0], np.float32), p))
    assert not np.isfinite(naive).any()


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_gradient_is_tanh_minus_target(dtype):
    h, y = grid()
    h = tf.constant(h, dtype)
    y = tf.constant(y, dtype)
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss = tf.reduce_sum(u.tanh_cross_entropy(y, h))
    grad = tape.gradient(loss, h)
    np.testing.assert_allclose(grad.numpy(), (tf.tanh(h) - y).numpy(), atol=1e-6)


def test_loss_class_averages_per_image():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    h = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    loss = u.TanhCrossEntropy()
    expected = np.asarray(u.tanh_cross_entropy(y, h)).mean()
    assert abs(float(loss(y, h)) - expected) < 1e-6
    per_image = loss.call(y, h)
    assert tuple(per_image.shape) == (4,)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, u.TanhCrossEntropy)


def test_identity_checker_finds_true_and_false():
    import sympy as sp
    h, x = sp.symbols("h x", real=True)
    ok = u.check_identity("tanh via sigmoid", sp.tanh(h), 2 / (1 + sp.exp(-2 * h)) - 1)
    assert ok.holds and "True" in repr(ok)
    bad = u.check_identity("wrong variable", sp.tanh(h), 2 / (1 + sp.exp(-2 * x)) - 1)
    assert not bad.holds and bad.counterexample is not None
    assert "False" in repr(bad) and "False" in bad._repr_latex_()
