"""The layout promises of the code base, checked on its sources."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Which rooms (subpackages of steerlab) each room may import. "top" is steerlab's own modules
# (the public API in __init__.py, steering.py, jobs.py); "cli" is the make targets' runners.
ALLOWED = {
    "base": set(),
    "store": {"base"},
    "questions": {"base"},
    "lm": {"base", "store", "questions"},
    "methods": {"base", "questions", "lm"},  # finding vectors never imports their measurement
    "measure": {"base", "store", "questions", "lm"},  # nor measuring the methods
    "interop": {"base", "store", "questions", "lm", "measure"},
    "render": {"base", "store", "questions", "measure"},  # draws what measure computed
    "top": {"base", "store", "questions", "lm", "methods", "measure", "interop", "render"},
    "cli": {"base", "store", "questions", "lm", "methods", "measure", "interop", "render", "top"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return (parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / "steerlab" / parts[1]).is_dir())
            else "top")


def steerlab_imports() -> dict[str, set[str]]:
    """steerlab module -> the steerlab modules it imports anywhere (functions and TYPE_CHECKING too);
    ``from steerlab.x import name`` counts as importing steerlab.x.name where that is a module."""
    modules = {module_name(path): path for path in sorted((ROOT / "steerlab").rglob("*.py"))}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "steerlab":
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "steerlab"}
        graph[module] = found - {module}
    return graph


def test_steerlab_has_no_import_cycle():
    graph = steerlab_imports()
    assert (graph["steerlab.lm.site"] == {"steerlab.base.errors"}
            and "steerlab.lm.site" in graph["steerlab.lm.model"])
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_each_room_imports_only_the_rooms_below_it():
    graph = steerlab_imports()
    assert set(ALLOWED) == {room(m) for m in graph}, "a new room needs its line in ALLOWED"
    offending = [f"{module} imports {imported}"
                 for module, imports in sorted(graph.items()) for imported in sorted(imports)
                 if room(imported) != room(module) and room(imported) not in ALLOWED[room(module)]]
    assert offending == []


def test_nothing_below_the_cli_imports_it():
    graph = steerlab_imports()
    assert [m for m, imports in graph.items()
            if room(m) != "cli" and any(room(i) == "cli" for i in imports)] == []


def test_no_store_path_is_built_outside_the_store_module():
    built = re.compile(r"""f["'][^"'\n]*/(vectors|evals|generations|neutral)[/"'{]""")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for path in sorted((ROOT / "steerlab").rglob("*.py"))
                 if "store" not in path.relative_to(ROOT).parts
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if built.search(line)]
    assert offenders == []


def test_every_benchmark_module_imports():
    """`make bench` runs for many minutes; a module that no longer imports must fail here first."""
    import importlib

    for path in sorted((ROOT / "bench").glob("test_*.py")):
        importlib.import_module(f"bench.{path.stem}")


def test_pip_install_ships_every_package_of_the_tree():
    """pyproject.toml names the packages setuptools installs: a room added or removed without its
    line there breaks `pip install .` (make check-install) or leaves a room out of it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
                 ["tool"]["setuptools"]["packages"])
    in_tree = {module_name(path) for path in (ROOT / "steerlab").rglob("__init__.py")}
    assert listed == in_tree


def test_measurement_reaches_the_model_through_the_steered_forward_not_the_segment_primitives():
    """measure/ turns logits into scores: the segment's primitives (caches, masks, layer runs)
    stay inside lm/, behind steerlab.lm.steered."""
    import ast

    offending = []
    for path in sorted((ROOT / "steerlab" / "measure").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "steerlab.lm.segment":
                offending += [f"{path.name}: {alias.name}" for alias in node.names
                              if alias.name != "residual_norms"]
    assert offending == []
