"""Data flows one way (docs/architecture.md): no module imports a layer above its own, lazy
imports inside functions included. Read from the source, so nothing is imported. And the
distribution holds what the four folders hold: every package, and every file in a wheel."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = {"entpruner_sdk": ROOT / "entpruner_sdk", "entpruner_sdk.export": ROOT / "export",
            "entpruner_sdk.serve": ROOT / "serve", "entpruner_sdk.apps": ROOT / "apps"}

# Lower levels first. A layer may import only layers on a strictly lower level; layers that
# share a level are independent of each other.
LEVELS = [
    {"utils"},
    {"data"},
    {"models"},
    {"objectives"},
    {"teachers"},
    {"training", "sampling"},
    {"evaluation", "importance"},
    {"schedule"},
    {"compress"},
    {"quickstart", "export"},
    {"serve", "apps"},
    {"cli", "__init__"},
    {"__main__"},
]
LEVEL = {layer: level for level, layers in enumerate(LEVELS) for layer in layers}


def layer_of(module: str) -> str | None:
    """``entpruner_sdk.compress.runner`` -> ``compress``; None outside the package."""
    parts = module.split(".")
    if parts[0] != "entpruner_sdk":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str = "entpruner_sdk.x") -> set[str]:
    """Absolute names of what ``source`` (the text of ``module``) imports."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # `from ..compress import x` in a.b.c -> a.compress
            base = ".".join(module.split(".")[: -node.level]) if node.level else ""
            name = ".".join(part for part in (base, node.module) if part)
            if name == "entpruner_sdk":  # `from entpruner_sdk import compress`
                modules.update(f"entpruner_sdk.{alias.name}" for alias in node.names)
            else:
                modules.add(name)
    return modules


def sources():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            module = ".".join([package, *path.relative_to(folder).with_suffix("").parts])
            yield module, path


def import_edges() -> list[tuple[str, str, str]]:
    """(layer, module, imported layer) for every import that leaves the module's layer."""
    edges = []
    for module, path in sources():
        own = layer_of(module)
        for target in map(layer_of, imported_modules(path.read_text(), module)):
            if target is not None and target != own:
                edges.append((own, module, target))
    return edges


def test_every_layer_has_a_level():
    layers = {layer_of(module) for module, _ in sources()}
    assert layers - LEVEL.keys() == set(), "add the new layer to LEVELS and the architecture doc"


def test_no_layer_imports_one_above_it():
    upward = sorted({f"{module} ({layer}) imports {target}"
                     for layer, module, target in import_edges()
                     if LEVEL[target] >= LEVEL[layer]})
    assert upward == []


@pytest.mark.parametrize("source, expected", [
    ("from entpruner_sdk.compress import compress", {"entpruner_sdk.compress"}),
    ("from entpruner_sdk import export", {"entpruner_sdk.export"}),
    ("def f():\n    import entpruner_sdk.serve.app", {"entpruner_sdk.serve.app"}),
    ("from ..compress import runner", {"entpruner_sdk.compress"}),
    ("import torch", {"torch"}),
])
def test_imports_are_found_lazy_and_relative_ones_too(source, expected):
    assert imported_modules(source, "entpruner_sdk.data.datasets") == expected


def test_every_package_is_in_the_distribution():
    """pyproject names its packages one by one: a subpackage left out still imports from an
    editable install, and is missing from every wheel."""
    # tomllib is Python 3.11's; tomli, its source, is the dev extra's on 3.10
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join([package, *init.parent.relative_to(folder).parts])
             for package, folder in PACKAGES.items() for init in folder.rglob("__init__.py")}
    assert "entpruner_sdk.cli" in found
    assert found - set(settings["packages"]) == set()
    assert {package: str(folder.relative_to(ROOT)) for package, folder in PACKAGES.items()} \
        == settings["package-dir"]


def _source_files(package: str, folder: Path) -> set[str]:
    """Every file under a package's folder, named as a wheel names it."""
    return {"/".join([*package.split("."), *path.relative_to(folder).parts])
            for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_four_folders_and_builds_without_warnings(tmp_path):
    """What a user installs from a wheel, not an editable checkout: the bundled teachers and
    classifiers (data, not modules) among the files, and no setuptools deprecation, which
    becomes a build that fails."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__}; the build needs 77 or later")
    source = tmp_path / "source"  # a copy: building in the checkout would write build/ there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in PACKAGES.values():
        shutil.copytree(folder, source / folder.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # Python's warnings read "SetuptoolsDeprecationWarning: ...", "_Warning: ..."
    assert re.findall(r"^.*[A-Za-z_]Warning: .*$", built.stdout + built.stderr, re.M) == []
    (wheel,) = (tmp_path / "dist").glob("entpruner_sdk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set().union(*(_source_files(package, folder)
                             for package, folder in PACKAGES.items()))
    assert expected - names == set()
    assert any(name.endswith("classifier.safetensors") for name in names)
    assert any(name.startswith("entpruner_sdk/teachers/dit-digits/") for name in names)
