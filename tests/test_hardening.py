"""Hardening: bad input at every entry point, interruption and resume, determinism, several devices."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr

import keras
import numpy as np
import pytest

import t2i_utils as u

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (chars, spec, a fragment the message must contain): each names the offending token or rule.
BAD_INPUTS = [
    ("", "", "empty"),
    ("abcd", "", "at most 3"),
    ("a b", "", "' '"),
    (" a", "", "' '"),
    ("a\t", "", "'\\t'"),
    ("é", "", "'é'"),
    ("4ä", "", "'ä'"),
    ("ab!", "", "'!'"),
    ("日本", "", "'日'"),
    ("a\n", "", "'\\n'"),
    (42, "", "str"),
    (None, "", "str"),
    ("4a", 7, "str"),
    ("4a", "colour red", "'colour'"),
    ("4a", "color pink", "'pink'"),
    ("4a", "color red, color blue", "more than once"),
    ("4a", "color red; backgroundcolor blue", "';'"),
    ("4a", "color", "'color'"),
    ("4a", "color red blue", "'color red blue'"),
    ("4a", "color red,, backgroundcolor blue", "empty"),
    ("4a", "fontfamily comic", "'comic'"),
    ("4a", "fontweight heavy", "'heavy'"),
    ("4a", "fontstyle oblique", "'oblique'"),
    ("4a", "size 12", "'size'"),
]


@pytest.fixture(scope="module")
def untrained():
    keras.utils.set_random_seed(0)
    return u.build_generator()


@pytest.mark.parametrize("chars, spec, fragment", BAD_INPUTS)
def test_bad_input_everywhere(untrained, chars, spec, fragment):
    # Python API: a ValueError/TypeError naming the problem, raised before the model runs.
    with pytest.raises((ValueError, TypeError)) as info:
        u.generate(untrained, chars, spec)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message.strip()
    # Command line (in-process; a real subprocess is tested in test_generator): exit 2, one line.
    if isinstance(chars, str) and isinstance(spec, str):
        err = io.StringIO()
        with redirect_stderr(err):
            status = u.main(["generate", chars, spec, "-o", os.devnull])
        assert status == 2
        assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("error: ")
        assert fragment in err.getvalue()
    # Widget: the message shows under the inputs and the last good pictures stay.
    w = u.GeneratorWidget(untrained, chars="4a", spec="color red, backgroundcolor blue")
    good = {k: i.value for k, i in w.images.items()}
    w.chars.value, w.spec.value = (str(chars) if chars is not None else ""), str(spec)
    if chars is None or not isinstance(chars, str) or not isinstance(spec, str):
        return  # a text box always holds a string: the str() forms are tested through the other rows
    assert w.message.value and "Traceback" not in w.message.value
    assert {k: i.value for k, i in w.images.items()} == good


def _run(script, *args, timeout=600):
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


DETERMINISM = """
import json, sys, hashlib
import keras, tensorflow as tf
keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
import t2i_utils as u
batches = list(u.epoch_dataset(u.TrainingState(level=2), steps=2, batch_size=8, seed=0))
digest = hashlib.sha256(b"".join(x.numpy().tobytes() for b in batches for x in (b[0]["chars"], b[0]["spec"], b[1]))).hexdigest()
losses = []
record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
u.train_generator(None, epochs=1, steps_per_epoch=4, batch_size=8, seed=0, verbose=0, callbacks=[record])
print(json.dumps({"data": digest, "losses": losses}))
"""


def test_same_seed_same_batches_and_losses():
    runs = []
    for _ in range(2):
        result = _run(DETERMINISM)
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0]["data"] == runs[1]["data"]
    assert len(runs[0]["losses"]) == 4 and runs[0]["losses"] == runs[1]["losses"]


MIRRORED = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import t2i_utils as u

import numpy as np

def run(strategy):
    keras.utils.set_random_seed(0)
    model, history = u.train_generator(None, epochs=2, steps_per_epoch=3, batch_size=8, verbose=0, strategy=strategy,
                                       precision="float32")
    return [r["loss"] for r in history], model.get_weights()

keras.utils.set_random_seed(0)
initial = u.build_generator().get_weights()  # what train_generator starts from with seed 0

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
batch = next(iter(mirrored.experimental_distribute_dataset(
    u.epoch_dataset(u.TrainingState(), steps=1, batch_size=8, seed=0))))
per_replica = [int(v.shape[0]) for v in mirrored.experimental_local_results(batch[1])]
(single, w_single), (both, w_mirrored) = run(None), run(mirrored)
print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "per_replica": per_replica,
                  "single": single, "mirrored": both,
                  "moved": max(float(np.abs(a - b).max()) for a, b in zip(w_single, initial)),
                  "apart": max(float(np.abs(a - b).max()) for a, b in zip(w_single, w_mirrored))}))
"""


def test_mirrored_strategy_on_two_logical_cpus_matches_one_device():
    result = _run(MIRRORED)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["per_replica"] == [4, 4]  # the global batch of 8, split
    np.testing.assert_allclose(out["mirrored"], out["single"], rtol=1e-4)
    # It trains (6 Adam steps of 1e-3 move some weight by about 6e-3; the loss of 6 tiny batches is
    # too noisy to show it), and both runs end with the same weights.
    assert out["moved"] > 1e-3, out
    assert out["apart"] < 0.01 * out["moved"], out  # float32 all-reduce order: ~2e-6 here


def test_sigkill_mid_epoch_then_resume(tmp_path):
    out = str(tmp_path / "g.keras")
    ckpt = tmp_path / "g.ckpt"
    cmd = [sys.executable, os.path.join(ROOT, "t2i_utils.py"), "train-generator", "--out", out, "--epochs", "3",
           "--steps-per-epoch", "40", "--batch-size", "8", "--eval-n", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    state_file = ckpt / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists() and json.load(open(state_file))["state"]["epoch"] == 1:
            break
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 2 (about 3 s of steps, then the end-of-epoch work)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.load(open(state_file))
    assert saved["state"]["epoch"] == 1 and [r["epoch"] for r in saved["history"]] == [1]
    assert keras.models.load_model(str(ckpt / "model.keras")).optimizer.iterations.numpy() == 40
    assert not os.path.exists(out)

    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"resuming from {ckpt} at epoch 2, level {saved['state']['level']}" in result.stdout
    history = json.load(open(tmp_path / "g.history.json"))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0] == saved["history"][0]  # the finished epoch is kept, not redone
    # The optimizer state came back: 3 epochs x 40 steps, not 2 x 40 after a fresh start.
    assert keras.models.load_model(str(ckpt / "model.keras")).optimizer.iterations.numpy() == 120
    assert not [f for f in os.listdir(ckpt) if ".tmp" in f]
    assert u.load_generator(out).output_shape == (None, 128, 128, 3)


def test_mixed_precision_training_step_stays_finite():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = u.compile_generator(u.build_generator())
        # The convolutions follow the global policy; the output head stays float32 (the loss's
        # float16 range is tested on its own in test_loss.py).
        assert model.get_layer("up1").compute_dtype == "float16"
        assert model.get_layer("coverage_maps").compute_dtype == "float32"
        assert model.output.dtype == "float32"
        x, y = u.sample_batch(np.random.default_rng(0), 2, level=2)
        loss, mae = model.train_on_batch(x, y)
        assert np.isfinite(loss) and 0.3 < loss < 1.0 and np.isfinite(mae)
    finally:
        keras.mixed_precision.set_global_policy("float32")
