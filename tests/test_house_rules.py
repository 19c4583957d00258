"""House rules read from the source (``ast``): no function over 80 lines, and no two modules of ``llmcpu`` with the
same base name (a name should say which module it is without its package)."""

import ast
import collections
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llmcpu"
MAX_FUNCTION_LINES = 80


def modules(package: pathlib.Path = PACKAGE) -> list[pathlib.Path]:
  return sorted(package.rglob("*.py"))


def long_functions(path: pathlib.Path, package: pathlib.Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
  """``module:function (n lines)`` for every function or method of ``path`` longer than ``limit`` lines, counted
  from its ``def`` (decorators excluded) to its last line, docstring included."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      n = node.end_lineno - node.lineno + 1
      if n > limit:
        found.append(f"{path.relative_to(package.parent)}:{node.name} ({n} lines)")
  return found


def repeated_base_names(paths: list[pathlib.Path], package: pathlib.Path = PACKAGE) -> dict[str, list[str]]:
  """Base names that more than one module has (``__init__.py`` aside), with the modules that have them."""
  by_name = collections.defaultdict(list)
  for p in paths:
    if p.name != "__init__.py":
      by_name[p.name].append(str(p.relative_to(package.parent)))
  return {name: found for name, found in sorted(by_name.items()) if len(found) > 1}


def test_no_function_over_80_lines():
  assert not [f for p in modules() for f in long_functions(p)]


def test_no_two_modules_share_a_base_name():
  assert repeated_base_names(modules()) == {}


def test_the_checkers_catch_what_they_look_for(tmp_path):
  # The checks themselves can fail: a planted 81-line function (beside an 80-line one) and a repeated name.
  package = tmp_path / "llmcpu"
  (package / "sub").mkdir(parents=True)
  long = package / "long.py"
  long.write_text("def f():\n" + "  x = 1\n" * 79 + "  return x\n\n\ndef g():\n" + "  pass\n" * 79)
  for name in ("__init__.py", "sub/__init__.py", "sub/long.py"):
    (package / name).write_text("")
  assert long_functions(long, package) == ["llmcpu/long.py:f (81 lines)"]
  assert repeated_base_names(modules(package), package) == {"long.py": ["llmcpu/long.py", "llmcpu/sub/long.py"]}
