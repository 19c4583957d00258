"""The package's import graph: no cycle, and every import points down the layers the README's Layout draws.

Read from the source (``ast``), so an import inside a function counts as much as one at the top of a module.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llmcpu"

# Lowest first. A module may import from its own layer's package and from any layer below, never from above.
LAYERS = [
  ("llmcpu.errors", "llmcpu.fs", "llmcpu.specials", "llmcpu.metrics"),
  ("llmcpu.compilers", "llmcpu.ops", "llmcpu.linalg"),
  ("llmcpu.data", "llmcpu.models"),
  (
    "llmcpu.toolchain",
    "llmcpu.training.loss",
    "llmcpu.training.optim",
    "llmcpu.training.parallel",
    "llmcpu.training.writer",
    "llmcpu.training.run_config",
  ),
  ("llmcpu.training.placement", "llmcpu.training.memory"),
  ("llmcpu.training.checkpoints",),
  ("llmcpu.training.trainer", "llmcpu.crosseval", "llmcpu.integrity"),
  (
    "llmcpu.training.derived",
    "llmcpu.training.hf_checkpoint",
    "llmcpu.training.group",
    "llmcpu.training.cooldown",
  ),  # a run started from other CPUs' checkpoints: a port, a swap, a readout
  ("llmcpu.porting", "llmcpu.stitching"),  # port / stitch trained CPUs through the trainer
  ("llmcpu.experiments",),  # every experiment: plan → stages → report over all of the above
]


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """Every llmcpu module ``path`` imports: ``from llmcpu.a import b`` counts as llmcpu.a.b when that is a module,
  else as llmcpu.a."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      if base.split(".")[0] == "llmcpu":
        found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    elif isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "llmcpu"}
  return found


def graph() -> dict[str, set[str]]:
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: {m for m in imports(path, set(files)) if m in files and m != name} for name, path in files.items()}


def layer(module: str) -> int:
  for rank, group in enumerate(LAYERS):
    if any(module == top or module.startswith(top + ".") for top in group):
      return rank
  if module in ("llmcpu", "llmcpu.training"):  # packages whose __init__ imports nothing
    return -1
  raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README's Layout)")


def top(module: str) -> str:
  return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer():
  for module in graph():
    layer(module)


def test_imports_point_down():
  upward = [
    f"{a} → {b}"
    for a, deps in graph().items()
    for b in deps
    # Within one layer's package (llmcpu.data.*) any acyclic order is fine; training's modules have layers of their own.
    if layer(b) > layer(a) or (layer(b) == layer(a) and top(a) != top(b))
  ]
  assert not upward, upward


def test_no_cycles():
  edges = graph()
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done

  def visit(node: str, path: list[str]) -> None:
    state[node] = 1
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 1:
        raise AssertionError("import cycle: " + " → ".join([*path[path.index(nxt) :], nxt]))
      if nxt not in state:
        visit(nxt, [*path, nxt])
    state[node] = 2

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])


def test_evaluation_never_imports_the_trainer():
  for module, deps in graph().items():
    if module.startswith("llmcpu.crosseval"):
      assert not {d for d in deps if d.startswith(("llmcpu.training.trainer", "llmcpu.experiments"))}, module
