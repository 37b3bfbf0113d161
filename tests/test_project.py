"""Project hygiene: executed notebooks, one source of versions, a tidy support module."""
import ast
import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    names = [os.path.basename(n) for n in NOTEBOOKS]
    assert names[:2] and names[0].startswith("00_") and names[1].startswith("01_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_committed_executed_without_errors(path):
    nb = json.load(open(path))
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert None not in counts, "a code cell was saved unexecuted"
    assert counts == list(range(1, len(code) + 1)), "run it top to bottom in a fresh kernel"
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", "an error output is committed"
            assert "Error displaying widget" not in json.dumps(out)
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
    titles = [c for c in nb["cells"] if c["cell_type"] == "markdown"
              and re.search(r"^# ", "".join(c["source"]), re.M)]
    assert len(titles) == 1, "one title per notebook"


def _requirements():
    pins = {}
    for line in open(os.path.join(ROOT, "requirements.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt pins exactly (==): {line!r}"
            pins[name.lower()] = version
    return pins


def test_environment_yml_agrees_with_requirements():
    text = open(os.path.join(ROOT, "environment.yml")).read()
    assert "conda-forge" in text and re.search(r"^\s*-\s*pip\s*$", text, re.M)
    assert re.search(r"^\s*-\s*-r\s+requirements\.txt\s*$", text, re.M), "pip section: -r requirements.txt"
    python = re.search(r"^\s*-\s*python\s*=\s*([\d.]+)\s*$", text, re.M)
    assert python, "environment.yml pins python"
    pins = _requirements()
    for name in ("tensorflow", "keras", "jupyterlab", "ipywidgets", "matplotlib", "numpy", "sympy",
                 "nbval", "pytest"):
        assert name in pins, name
    # Conda packages other than python/pip must not contradict the pip pins.
    for m in re.finditer(r"^\s*-\s*([A-Za-z0-9_.-]+)\s*=+\s*([\w.]+)\s*$", text, re.M):
        name, version = m.group(1).lower(), m.group(2)
        if name in pins:
            assert pins[name] == version, f"{name}: environment.yml {version} vs requirements {pins[name]}"


def test_installed_versions_match_requirements():
    from importlib.metadata import version
    for name, pinned in _requirements().items():
        assert version(name) == pinned, name


def test_support_module_names_are_unique_and_documented():
    tree = ast.parse(open(os.path.join(ROOT, "t2i_utils.py")).read())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(names) == len(set(names)), "a name is defined twice"
    notebooks = {os.path.basename(n)[:-6] for n in NOTEBOOKS}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            m = re.search(r"Introduced in (\w+)", doc)
            assert m, f"{node.name}: docstring names no notebook"
            assert m.group(1) in notebooks, (node.name, m.group(1))
