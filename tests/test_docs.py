"""The README's code runs as written, and the public API is documented."""

import ast
import re
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PACKAGES = ("entpruner_sdk", "export", "serve", "apps")


def readme_code(heading: str) -> str:
    """The first Python block after ``heading`` in the README."""
    section = README.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_layers_run(capsys):
    import entpruner_sdk as ep

    names: dict = {}
    exec(compile(readme_code("### Each layer alone"), "README.md", "exec"), names)
    assert "SchedulePlan(due=True, k_min=0, k_max=2" in capsys.readouterr().out
    # what the README says of it: the criterion's choice is the one compress plans
    assert names["drop"] == ep.plan("dit-digits", "digits", 6).removed_blocks
    student = names["student"]
    assert student.depth == 6 and student.kept_blocks == sorted(
        set(range(12)) - set(names["drop"]))
    assert torch.isfinite(names["loss"]) and set(names["parts"]) == {"kd", "gt"}
    assert all(p.grad is not None for p in student.blocks.parameters())


def test_every_public_function_and_class_has_a_docstring():
    """Module-level names without a leading underscore; methods are left to their classes
    (an override says what its interface says)."""
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and not node.name.startswith("_") and ast.get_docstring(node) is None):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_every_public_function_is_annotated():
    """Module-level functions: each parameter and the return (methods follow their class)."""
    unannotated = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                    continue
                a = node.args
                params = a.posonlyargs + a.args + a.kwonlyargs + [
                    p for p in (a.vararg, a.kwarg) if p is not None]
                missing = [p.arg for p in params if p.annotation is None]
                if node.returns is None:
                    missing.append("return")
                if missing:
                    unannotated.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                                       + ", ".join(missing))
    assert not unannotated, "public functions not annotated:\n" + "\n".join(unannotated)
