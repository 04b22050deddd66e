"""The package's import graph: layers that only import downwards, and no circle (issue 14).

Every import counts, also those inside functions: an import moved into a function to dodge a circle is still one.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sft_knowledge"
# Lowest first. A module may import its own layer or the ones below it, never one above.
LAYERS = [
    ("foundation", {"", "errors", "data", "data.facts"}),  # "": the package itself
    ("settings and records", {"config", "cache", "results"}),
    ("shared pieces", {"data.synthetic", "data.entityquestions", "data.sampling", "decoding", "tracking", "provenance",
                       "shipped", "slurm_check", "structure"}),
    ("stages", {"pretrain", "models", "sources", "cost", "harness", "harness_tasks.xsum_rouge", "probe", "slick", "prescreen", "train", "fsdp", "evaluate", "kl", "restore", "export"}),
    ("recipe", {"recipe"}),
    ("entry points and readers", {"run", "overrides", "plan", "rebuild_world", "sweep", "summary", "status", "report", "report.__main__",
                                  "report.crosstab", "report.figures", "report.layout", "report.paper", "report.tables", "report.table5",
                                  "report.write"}),
]
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, by their dotted names below sft_knowledge."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("sft_knowledge"):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import tables` names a module; `from .x import f` a member of x
                candidate = ".".join(base + [alias.name])
                found.add(candidate if candidate in known else ".".join(base))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("sft_knowledge.") for a in node.names if a.name.startswith("sft_knowledge.")}
    return {m for m in found if m in known and m != module}


GRAPH = {m: _imports(m, p, set(_modules())) for m, p in _modules().items()}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LAYER_OF)) == [], "place new modules in LAYERS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    upward = sorted(m for m in GRAPH[module] if LAYER_OF[m] > LAYER_OF[module])
    assert upward == [], f"{module} ({LAYERS[LAYER_OF[module]][0]}) imports from a higher layer: {upward}"


def test_no_import_circle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for dep in sorted(GRAPH[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])
