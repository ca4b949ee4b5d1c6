"""The layers of DESIGN.md, enforced: every import inside kiln points along an arrow.

Each module belongs to a layer: its folder under ``kiln/`` (``kiln.bake.build`` is in
``bake``), or Ground for the modules directly in ``kiln/``. An import is checked wherever
it stands (top of the file, inside a function, under TYPE_CHECKING): a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
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
    "fleet": {"machines", "catalog", "store"},
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


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return GROUND


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every kiln module the file imports, absolute or relative."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
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
    return [(line, name) for line, name in found if name == "kiln" or name.startswith("kiln.")]


def _exists(module: str) -> bool:
    path = SOURCE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations() -> list[str]:
    out = []
    for path in sorted(SOURCE.rglob("*.py")):
        source = layer_of(module_name(path))
        for line, target in imports_of(path):
            if not _exists(target):
                continue  # a name imported from a module, not a module
            if target == "kiln":
                continue  # the package itself: __version__
            layer = layer_of(target)
            if layer in (source, GROUND):
                continue
            if layer not in ALLOWED[source]:
                rel = path.relative_to(SOURCE.parent)
                out.append(f"{rel}:{line}: {source} -> {layer} ({target})")
    return out


def test_every_import_follows_an_arrow() -> None:
    assert violations() == []


def test_ground_imports_only_ground() -> None:
    for path in SOURCE.glob("*.py"):
        for line, target in imports_of(path):
            if _exists(target):
                assert layer_of(target) == GROUND, f"{path.name}:{line} imports {target}"


def test_the_layout_of_the_design_is_in_the_tree() -> None:
    folders = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    assert {"recipe", "store", "catalog", "steps", "bake", "machines", "app", "cli"} <= folders
    for module in ("errors", "proc", "sandbox", "home", "digests", "atomic", "mounts"):
        assert (SOURCE / f"{module}.py").is_file(), module
    for module in ("rootpath", "refs", "volatile", "locks"):
        assert (SOURCE / f"{module}.py").is_file(), module


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
    ],
)
def test_a_forbidden_import_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, line: str, expected: str
) -> None:
    """The check itself: plant a file that breaks a never-arrow in a copy of the tree."""
    import shutil

    copy = tmp_path / "kiln"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / source
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(f"{line}\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["SOURCE"]), "SOURCE", copy)
    found = violations()
    assert any(expected in v and v.startswith(source) for v in found), found
