"""The package's layers: no module imports one of a higher layer, against the order docs/architecture.md writes down.

Every import is read from the source (``ast``), those inside functions included, so a deferred import that runs back
up a layer is found as well as a module-level one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from tests.utils import REPO

ROOT = REPO
PACKAGE = "monai_nasscam"


def read_layers(markdown: str) -> list[list[str]]:
    """The modules of each layer, bottom first, from the table under ``## Layers``: the names in backticks of its
    second column (``data``: the package and everything in it; ``errors``: one module)."""
    section = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    if section is None:
        raise ValueError("docs/architecture.md has no '## Layers' section")
    layers = []
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.match(r"^\d+\b", cells[0]):
            layers.append(re.findall(r"`([\w.]+)`", cells[1]))
    return layers


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its ``__init__``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def layer_of(module: str, layers: list[list[str]], package: str = PACKAGE) -> int | None:
    """The index of the layer of ``module`` (the longest name of the table that is it or holds it); the package's
    own ``__init__`` is at the bottom; ``None``: in no layer."""
    if module == package:
        return 0
    best: tuple[int, int] | None = None
    for index, names in enumerate(layers):
        for name in names:
            full = f"{package}.{name}"
            if (module == full or module.startswith(full + ".")) and (best is None or len(full) > best[0]):
                best = (len(full), index)
    return None if best is None else best[1]


def imports_of(path: Path, module: str, known: set[str], package: str = PACKAGE) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of the package in a file: ``import``, ``from ... import`` (relative
    ones resolved; ``from pkg import submodule`` names the submodule) and ``importlib.import_module("...")``, at any
    depth of the code."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        found += [(node.lineno, t) for t in targets if t == package or t.startswith(package + ".")]
    return found


def upward_imports(package_dir: Path, layers: list[list[str]], package: str = PACKAGE) -> list[str]:
    """One line per import of a module of a higher layer, and per module that is in no layer."""
    modules = module_names(package_dir)
    problems = []
    for module, path in modules.items():
        own = layer_of(module, layers, package)
        where = path.relative_to(package_dir.parent)
        if own is None:
            problems.append(f"{where}: {module} is in no layer of the table")
            continue
        for line, target in imports_of(path, module, set(modules), package):
            theirs = layer_of(target, layers, package)
            if theirs is not None and theirs > own:
                problems.append(f"{where}:{line} imports {target} (layer {theirs + 1}) from layer {own + 1}")
    return problems


def test_no_module_imports_a_higher_layer():
    layers = read_layers((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert len(layers) >= 5 and all(layers), layers
    named = [name for names in layers for name in names]
    assert len(named) == len(set(named)), f"a module is named in two layers: {named}"
    assert upward_imports(ROOT / PACKAGE, layers) == []


def test_the_walk_finds_an_upward_import_anywhere(tmp_path):
    """The checker on a small package with known answers: a deferred import inside a function, a relative one, a
    ``from pkg import submodule`` and an ``import_module`` call that run up are found; imports down or sideways are
    not; a module in no layer is named."""
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    files = {
        "__init__.py": "",
        "base.py": "import os\n",
        "low/__init__.py": "from .a import f\n",
        "low/a.py": "from toy import base\n\n\ndef f():\n    from toy.high import b  # deferred\n    return b\n",
        "low/c.py": "from ..high.b import g\nfrom toy import high\n",
        "low/d.py": "import importlib\nmod = importlib.import_module('toy.high.b')\nfrom . import a\n",
        "high/__init__.py": "",
        "high/b.py": "import toy.low.a\nfrom toy.base import os\n\n\ndef g():\n    pass\n",
        "stray.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    layers = read_layers("## Layers\n\n| layer | modules |\n|---|---|\n| 1 base | `base` |\n| 2 low | `low` |\n"
                         "| 3 high | `high` |\n\n## Next\n| 4 ignored | `stray` |\n")
    assert layers == [["base"], ["low"], ["high"]]
    assert sorted(upward_imports(pkg, layers, "toy")) == [
        "toy/low/a.py:5 imports toy.high.b (layer 3) from layer 2",
        "toy/low/c.py:1 imports toy.high.b (layer 3) from layer 2",
        "toy/low/c.py:2 imports toy.high (layer 3) from layer 2",
        "toy/low/d.py:2 imports toy.high.b (layer 3) from layer 2",
        "toy/stray.py: toy.stray is in no layer of the table",
    ]


def test_a_missing_table_is_no_pass():
    with pytest.raises(ValueError, match="no '## Layers' section"):
        read_layers("# Architecture\n")
    assert read_layers("## Layers\n\nno table\n") == []  # and the first test asks for 5 layers at least
