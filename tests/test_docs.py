"""The README's code runs as written, the commands the project names exist, and the public
API is documented."""

import ast
import importlib
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


def _texts():
    """(where, line) for every line of the README and docs, and of every string in the
    package's and the benchmarks' code (help, errors, hints)."""
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            yield f"{path.name}:{number}", line
    for folder in (*PACKAGES, "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                elif isinstance(node, ast.JoinedStr):  # an f-string: its fields as {}
                    text = "".join(part.value if isinstance(part, ast.Constant) else "{}"
                                   for part in node.values)
                else:
                    continue
                for offset, line in enumerate(text.splitlines()):
                    yield f"{path.relative_to(ROOT)}:{node.lineno + offset}", line


def test_every_command_line_the_project_names_parses():
    """``entpruner CMD --option value`` wherever the project says it (the README, docs, a
    hint in an error, ``entpruner env``'s lines): CMD is a command, each option one it takes,
    and a value one of its choices. ``env`` once pointed to a ``serve --backend ray``."""
    from entpruner_sdk.cli import build_parser

    parser = build_parser()
    commands = next(a.choices for a in parser._actions if a.choices and "serve" in a.choices)
    wrong, checked = [], 0
    for where, line in _texts():
        for command, rest in re.findall(r"entpruner (\w+)([^`\n;|)#]*)", line):
            if command not in commands:
                continue  # prose: "entpruner sdk", "entpruner and ..."
            options = {flag: action for action in commands[command]._actions
                       for flag in action.option_strings}
            for flag, value in re.findall(r"(--[\w-]+)(?:[ =]([a-z][\w-]*))?", rest):
                checked += 1
                if flag not in options:
                    wrong.append(f"{where}: entpruner {command} has no {flag}")
                elif value and options[flag].choices and value not in options[flag].choices:
                    wrong.append(f"{where}: entpruner {command} {flag} takes "
                                 f"{sorted(options[flag].choices)}, not {value}")
    assert checked > 300  # the pattern still finds the command lines
    assert wrong == []


def _resolve(dotted: str) -> object:
    """``entpruner_sdk.export.export`` -> the function: the longest module prefix, then its
    attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def test_every_api_name_the_docs_give_exists():
    """``ep.CompressResult.load``, ``entpruner_sdk.sampling.save_grid``: each dotted name the
    README and docs give a reader resolves (``ep`` is ``entpruner_sdk``)."""
    names = {"entpruner_sdk" + match
             for path in [README, *(ROOT / "docs").glob("*.md")]
             for match in re.findall(r"\b(?:ep|entpruner_sdk)((?:\.[A-Za-z_]\w*)+)",
                                     path.read_text())}
    assert len(names) >= 25  # the pattern still finds them
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
    assert missing == []


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
