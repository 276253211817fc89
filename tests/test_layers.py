"""The package's import drawing: subpackages in layers, every import to the same layer or a lower one, no circle.

The layers are declared once, here and in docs/architecture.md (a test below keeps the two equal). Imports are read
from the source (module level and inside functions alike), so a function-level import cannot hide a circle; only the
command line (`compiler/__main__.py`) imports inside functions, to keep `--help` from loading torch.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compiler"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

# From the bottom up: a module may import its own layer's modules and any lower layer's.
LAYERS = ("core", "stca", "runtime", "passes", "load", "verify", "precision", "repository", "serving", "build", "measure",
          "demo", "__main__")
LAZY_IMPORTS_ALLOWED = {"compiler.__main__"}


def layer_of(module: str) -> str:
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "triton_python" in parts or parts == ("compiler", "__init__"):
            continue  # the served models import their siblings by file name, inside Triton
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported compiler module, whether the import sits inside a function) for every import in the file."""
    tree, found = ast.parse(path.read_text()), []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("compiler"):
                for alias in child.names:  # `from compiler.passes import lint` imports the module compiler.passes.lint
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in known else child.module, in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names if a.name.startswith("compiler"))
            visit(child, nested)

    visit(tree, False)
    return [(name, lazy) for name, lazy in found if name != "compiler"]


known = modules()


@pytest.mark.parametrize("module", sorted(m for m in known if m != "compiler"))
def test_every_import_goes_to_the_same_layer_or_a_lower_one(module):
    here = LAYERS.index(layer_of(module))
    upward = [name for name, _ in imports(known[module], module) if LAYERS.index(layer_of(name)) > here]
    assert not upward, f"{module} (layer {LAYERS[here]}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in known if m not in LAZY_IMPORTS_ALLOWED and m != "compiler"))
def test_no_module_imports_the_package_inside_a_function(module):
    lazy = [name for name, inside in imports(known[module], module) if inside]
    assert not lazy, f"{module} imports {lazy} inside a function: import at the top, or the layering is wrong"


def test_the_module_graph_has_no_circle():
    graph = {m: {name for name, _ in imports(p, m) if name in known and name != m} for m, p in known.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_subpackage_has_a_layer_and_architecture_md_draws_the_same_layers():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages <= set(LAYERS), f"subpackages without a layer: {sorted(subpackages - set(LAYERS))}"
    drawn = re.findall(r"^\| `compiler/(\w+)/` \|", ARCHITECTURE.read_text(), flags=re.M)
    assert drawn == [layer for layer in LAYERS if layer in subpackages], "docs/architecture.md's layer table is out of date"
