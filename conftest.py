"""pytest set-up shared by the unit tests and nbval.

- The project root is importable (``import t2i_utils``).
- nbval sanitizes outputs with notebooks/sanitize.cfg unless another file is given.
- stderr (TensorFlow's start-up messages, warnings) is never compared.
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    if getattr(config.option, "nbval_sanitize_with", "missing") is None:
        config.option.nbval_sanitize_with = os.path.join(ROOT, "notebooks", "sanitize.cfg")


def pytest_collectstart(collector):
    if str(getattr(collector, "path", "")).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)
