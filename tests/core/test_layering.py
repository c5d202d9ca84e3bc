"""lora_core's import graph, read from the source with ast (no module is imported): acyclic, layered, and free of
the dashboard.

Layers, each importing only its own or lower ones: the core (the modules at the top of lora_core: model, data,
train, lora, ...) and the storage (lora_core.store) below, which use each other (data reads through
store.fileio, store.artifacts saves lora's adapters); the lab's workflows (lora_core.lab) on them; the command
line (lora_core.cli, lora_core.__main__) on top. Every import counts, those inside functions too; those under
`if TYPE_CHECKING:` (type hints only, never run) do not.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lora_core"
FORBIDDEN = ("streamlit", "dashboard")  # the library must run without the dashboard or its framework
LAYERS = {"core": 0, "store": 0, "lab": 1, "cli": 2}
CLI_SHARED = {"lora_core.cli.options", "lora_core.cli.common", "lora_core.cli.render"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports (lora_core's resolved to the module, `from X import name` to X.name where
    that is a module), the other packages by their top-level name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
        block.body = []  # imports for type hints only never run: they cannot make a cycle at import time
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return {name if name.split(".")[0] == "lora_core" else name.split(".")[0] for name in found}


GRAPH = {module: {m for m in _imports(module, path) if m in MODULES} for module, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    if module == "lora_core.__main__":
        return "cli"
    return parts[1] if parts[1:2] in (["cli"], ["lab"], ["store"]) else "core"  # lora_core.lora.* is core


def test_the_graph_covers_the_package() -> None:
    assert {"lora_core.train", "lora_core.store.artifacts", "lora_core.lab.study", "lora_core.cli.train"} <= set(GRAPH)
    assert "lora_core.cli.options" in GRAPH["lora_core.cli.train"]  # a `from X import name` is read


def test_no_import_cycle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_lora_core_never_imports_the_dashboard() -> None:
    offending = {
        module: sorted(found)
        for module, path in MODULES.items()
        if (found := {name for name in _imports(module, path) if name in FORBIDDEN})
    }
    assert not offending, offending


def test_each_layer_imports_only_its_own_or_lower_ones() -> None:
    upward = [
        f"{module} ({_layer(module)}) imports {imported} ({_layer(imported)})"
        for module, imported_set in GRAPH.items()
        for imported in sorted(imported_set)
        if LAYERS[_layer(imported)] > LAYERS[_layer(module)]
    ]
    assert not upward, upward


def test_cli_commands_import_only_the_shared_cli_modules() -> None:
    """The options, the shared work and the text import no command; a command imports no other command."""
    commands = {m for m in GRAPH if _layer(m) == "cli"} - CLI_SHARED - {"lora_core.cli", "lora_core.__main__"}
    assert {"lora_core.cli.train", "lora_core.cli.mydigits", "lora_core.cli.analyze"} <= commands
    wrong = {
        module: sorted(imported & commands)
        for module, imported in GRAPH.items()
        if module not in ("lora_core.cli", "lora_core.__main__") and imported & commands
    }
    assert not wrong, wrong
    assert not GRAPH["lora_core.cli.options"] & (CLI_SHARED | {"lora_core.cli"})  # options stand alone
    assert GRAPH["lora_core.cli"] >= commands  # the package builds the parser from every command
