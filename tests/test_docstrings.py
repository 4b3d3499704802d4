"""Every public function and class that ships is documented (the developers' guide: shapes, units, errors).

An AST scan of every ``.py`` under streams/, processors/, trainers/ and infra/ finds each public
function, method, property and class (its name does not start with ``_``; module level, or in a class,
nested classes included) and fails naming ``file:line:name`` of every one without a docstring.
Exempt: ``__init__`` and the other dunder methods (their names start with ``_``) and functions or
classes nested inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("streams", "processors", "trainers", "infra")

Definition = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _undocumented(body: list[ast.stmt], path: str) -> list[str]:
    """``file:line:name`` of each public definition in ``body`` (and in its classes) with no docstring."""
    missing: list[str] = []
    for node in body:
        if not isinstance(node, Definition):
            continue
        if not node.name.startswith("_") and ast.get_docstring(node) is None:
            missing.append(f"{path}:{node.lineno}:{node.name}")
        if isinstance(node, ast.ClassDef):
            missing.extend(_undocumented(node.body, path))
    return missing


def _public_definitions(body: list[ast.stmt]) -> int:
    """How many public definitions ``body`` holds, its classes' members included."""
    count = 0
    for node in body:
        if isinstance(node, Definition):
            count += not node.name.startswith("_")
            if isinstance(node, ast.ClassDef):
                count += _public_definitions(node.body)
    return count


def _files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_scan_sees_the_code_base():
    files = _files()
    assert len(files) > 50
    assert sum(_public_definitions(ast.parse(p.read_text()).body) for p in files) > 500


def test_scan_finds_an_undocumented_definition():
    source = (
        "class Documented:\n"
        "    '''Doc.'''\n"
        "    def method(self):\n"
        "        pass\n"
        "    @property\n"
        "    def value(self):\n"
        "        '''Doc.'''\n"
        "    def __init__(self):\n"
        "        def nested():\n"
        "            pass\n"
        "def _private():\n"
        "    pass\n"
        "async def run():\n"
        "    pass\n"
    )
    assert _undocumented(ast.parse(source).body, "x.py") == ["x.py:3:method", "x.py:13:run"]


def test_every_public_function_and_class_has_a_docstring():
    missing = [
        line
        for path in _files()
        for line in _undocumented(ast.parse(path.read_text()).body, str(path.relative_to(ROOT)))
    ]
    assert not missing, f"{len(missing)} public functions/classes without a docstring:\n" + "\n".join(missing)
