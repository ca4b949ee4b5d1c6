"""The layers of DESIGN.md, enforced: every import inside kiln points along an arrow.

Each module belongs to a layer: its folder under ``kiln/`` (``kiln.bake.build`` is in
``bake``), or Ground for the modules directly in ``kiln/``; a folder that is no layer is
a failure of its own, never Ground. An import is checked wherever it stands (top of the
file, inside a function, under TYPE_CHECKING, or named by a string to
``importlib.import_module``): a lazy import is still a dependency. Some third-party
packages belong to one layer alone (SQLAlchemy and Alembic to ``catalog``), so a column
change touches the model, a migration and one query module.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

import kiln

SOURCE = Path(kiln.__file__).parent
GROUND = "ground"

# What each layer may import besides itself. Ground imports nothing above it.
ALLOWED: dict[str, set[str]] = {
    GROUND: set(),
    "recipe": {"steps"},  # a step kind's option model lives beside its code
    "steps": set(),
    "store": set(),
    "catalog": set(),
    "apt": set(),  # sources, Release files, Packages indexes, version order
    "bake": {"steps", "recipe", "store", "catalog", "apt"},
    "machines": {"steps", "recipe", "store", "catalog"},
    "lifecycle": {"recipe", "store", "catalog", "apt"},
    "fleet": {"machines", "catalog", "store", "lifecycle", "recipe"},
    "app": {
        "recipe",
        "steps",
        "store",
        "catalog",
        "apt",
        "bake",
        "machines",
        "lifecycle",
        "fleet",
    },
    "cli": {"app"},
    "server": {"app"},
}
LAYERS = set(ALLOWED)
UNKNOWN = "unknown"  # a folder under kiln/ that is no layer

# Third-party packages only these layers may import.
OWNED: dict[str, set[str]] = {"sqlalchemy": {"catalog"}, "alembic": {"catalog"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and _is_package(parts[1])):
        return parts[1] if parts[1] in LAYERS else UNKNOWN
    return GROUND


def _is_package(name: str) -> bool:
    return (SOURCE / name).is_dir()


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_module_string(node: ast.Call) -> str | None:
    """The module a call ``importlib.import_module("kiln.x")`` (or ``import_module``)
    names by a string literal, else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def all_imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every module the file imports, absolute or relative, in an
    import statement anywhere or by a string given to importlib."""
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    return list(_imports(path.read_text(), str(path), package))


@functools.cache
def _imports(text: str, filename: str, package: str) -> tuple[tuple[int, str], ...]:
    """The imports of one file's text (each file parsed once however often it is asked)."""
    tree = ast.parse(text, filename)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            named = _import_module_string(node)
            if named is not None:
                found.append((node.lineno, named))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from kiln import proc` and `from kiln.bake import build` name modules too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return tuple(found)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every kiln module the file imports."""
    found = all_imports_of(path)
    return [(line, name) for line, name in found if name == "kiln" or name.startswith("kiln.")]


def _exists(module: str) -> bool:
    path = SOURCE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations() -> list[str]:
    out = []
    for path in sorted(SOURCE.rglob("*.py")):
        source = layer_of(module_name(path))
        rel = path.relative_to(SOURCE.parent)
        if source == UNKNOWN:
            out.append(f"{rel}:1: {UNKNOWN} layer ({module_name(path)}): not in ALLOWED")
            continue
        for line, target in all_imports_of(path):
            top = target.split(".")[0]
            if top in OWNED and source not in OWNED[top]:
                out.append(f"{rel}:{line}: {source} -> {top} ({target}), only in {OWNED[top]}")
        for line, target in imports_of(path):
            if not _exists(target):
                continue  # a name imported from a module, not a module
            if target == "kiln":
                continue  # the package itself: __version__
            layer = layer_of(target)
            if layer in (source, GROUND):
                continue
            if layer not in ALLOWED[source]:
                out.append(f"{rel}:{line}: {source} -> {layer} ({target})")
    return out


def test_every_import_follows_an_arrow() -> None:
    assert violations() == []


def test_ground_imports_only_ground() -> None:
    for path in SOURCE.glob("*.py"):
        for line, target in imports_of(path):
            if _exists(target):
                assert layer_of(target) == GROUND, f"{path.name}:{line} imports {target}"


def test_every_folder_is_a_layer() -> None:
    """A folder under kiln/ is a layer with its arrows, never a grab-bag counted as Ground."""
    folders = {p.name for p in SOURCE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= LAYERS, folders - LAYERS


def test_sqlalchemy_and_alembic_only_in_the_catalog() -> None:
    for path in sorted(SOURCE.rglob("*.py")):
        source = layer_of(module_name(path))
        for line, target in all_imports_of(path):
            top = target.split(".")[0]
            assert top not in OWNED or source in OWNED[top], f"{path}:{line} imports {target}"


def test_the_layout_of_the_design_is_in_the_tree() -> None:
    folders = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    assert {"recipe", "store", "catalog", "steps", "bake", "machines", "app", "cli"} <= folders
    for module in ("errors", "proc", "sandbox", "home", "digests", "atomic", "mounts"):
        assert (SOURCE / f"{module}.py").is_file(), module
    for module in ("rootpath", "refs", "volatile", "locks"):
        assert (SOURCE / f"{module}.py").is_file(), module


@pytest.fixture(scope="module")
def copy_of_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of kiln's source for the planted files (each test removes its own)."""
    top = tmp_path_factory.mktemp("tree")
    shutil.copytree(SOURCE, top / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    return top


def test_the_copy_of_the_tree_is_clean(copy_of_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["SOURCE"]), "SOURCE", copy_of_tree / "kiln")
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "line", "expected"),
    [
        ("kiln/machines/x.py", "from kiln.bake import build", "machines -> bake"),
        ("kiln/store/x.py", "import kiln.catalog.db", "store -> catalog"),
        ("kiln/recipe/x.py", "from kiln.store.layout import Layout", "recipe -> store"),
        ("kiln/bake/x.py", "from kiln.cli import main", "bake -> cli"),
        ("kiln/x.py", "from kiln.bake.plan import plan", "ground -> bake"),
        ("kiln/machines/x.py", "from ..bake import build", "machines -> bake"),
        ("kiln/apt/x.py", "from kiln.catalog.lookup import Lookup", "apt -> catalog"),
        ("kiln/apt/x.py", "from kiln.bake.plan import plan", "apt -> bake"),
        # lazy, under TYPE_CHECKING, by importlib: each still a dependency
        ("kiln/store/x.py", "def f():\n    from kiln.catalog import db\n", "store -> catalog"),
        (
            "kiln/machines/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kiln.bake import plan\n",
            "machines -> bake",
        ),
        (
            "kiln/machines/x.py",
            'import importlib\nbuild = importlib.import_module("kiln.bake.build")\n',
            "machines -> bake",
        ),
        (
            "kiln/lifecycle/x.py",
            'from importlib import import_module\ndef f():\n    import_module("kiln.bake")\n',
            "lifecycle -> bake",
        ),
        # third-party packages one layer owns
        ("kiln/app/x.py", "from sqlalchemy import select", "app -> sqlalchemy"),
        ("kiln/lifecycle/x.py", "def f():\n    import sqlalchemy.orm\n", "lifecycle -> sqlalchemy"),
        ("kiln/machines/x.py", "from alembic import command", "machines -> alembic"),
        (
            "kiln/x.py",
            'import importlib\nimportlib.import_module("sqlalchemy")\n',
            "ground -> sqlalchemy",
        ),
        # a folder that is no layer is not Ground
        ("kiln/util/__init__.py", "", "unknown layer"),
        ("kiln/util/strings.py", "from kiln import proc", "unknown layer"),
    ],
)
def test_a_forbidden_import_is_caught(
    copy_of_tree: Path, monkeypatch: pytest.MonkeyPatch, source: str, line: str, expected: str
) -> None:
    """The check itself: plant a file that breaks a rule in a copy of the tree."""
    planted = copy_of_tree / source
    made = not planted.parent.exists()
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(f"{line}\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["SOURCE"]), "SOURCE", copy_of_tree / "kiln")
    try:
        found = violations()
    finally:
        shutil.rmtree(planted.parent) if made else planted.unlink()
    assert any(expected in v and v.startswith(source) for v in found), found
