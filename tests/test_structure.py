"""The layout promises of the code base, checked on its sources."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def engine_imports() -> dict[str, set[str]]:
    """engine module -> the engine modules it imports anywhere (functions and TYPE_CHECKING too)."""
    graph = {}
    for path in sorted((ROOT / "engine").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("engine.")}
        graph[path.stem] = found
    return graph


def test_the_engine_has_no_import_cycle():
    graph = engine_imports()
    assert graph["site"] == {"errors"} and "site" in graph["model"]
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


def test_the_engine_does_not_import_the_runners():
    for path in (ROOT / "engine").glob("*.py"):
        assert "from runners" not in path.read_text(encoding="utf-8"), path.name


def test_no_store_path_is_built_outside_the_store_module():
    built = re.compile(r"""f["'][^"'\n]*/(vectors|evals|generations|neutral)[/"'{]""")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for folder in ("engine", "runners")
                 for path in sorted((ROOT / folder).glob("*.py")) if path.name != "store.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if built.search(line)]
    assert offenders == []


def test_every_benchmark_module_imports():
    """`make bench` runs for many minutes; a module that no longer imports must fail here first."""
    import importlib

    for path in sorted((ROOT / "bench").glob("test_*.py")):
        importlib.import_module(f"bench.{path.stem}")
