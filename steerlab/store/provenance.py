"""What every computed group records about how it was made: its settings, the hash of the code
that computes it and of the computing libraries' releases (so unchanged work is skipped, and
changed code or another torch, transformers or numpy recomputes), the commit, when and how long.

The code hash follows names, not files. From its root (a runner module, or one function) it
reaches every top-level definition of the project that the reached code names, through imports
and re-exports, and hashes each by its name and its code (``ast.unparse``, docstrings dropped),
never by the module it sits in. So moving a function to another module, splitting a module, or
editing a docstring, a comment or the layout of a line recomputes nothing; changing the code of
a reached definition recomputes every group it reaches; a definition nothing reaches (another
method, the report, the figures) never counts. Top-level statements that run on import beyond
binding a name (a call, and every top-level ``if``, ``try``, ``with`` or ``for``, whatever it
defines) count whenever their module, or a module below their package, is reached."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder `steerlab/` is in
PROJECT_PACKAGES = ("steerlab",)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# The libraries whose releases change the numbers a group holds (transformers 5.24 changed the
# decoder layers' cache argument; torch's kernels, numpy's RNG and reductions).
COMPUTING_LIBRARIES = ("torch", "transformers", "numpy")


def library_versions() -> dict[str, str]:
    """The installed release of each of ``COMPUTING_LIBRARIES`` ("" where one is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in COMPUTING_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


def code_version(*roots: str, parent: Path = PACKAGE_PARENT) -> str:
    """Hash of what computes a group: the code reached from ``roots`` (modules, ``"steerlab.cli.caa"``:
    all their top-level code; or definitions in them, ``"steerlab.measure.scales:residual_units"``)
    and the releases of the computing libraries (``library_versions``), so a group computed under
    another torch, transformers or numpy is recomputed. ``parent`` is the folder the project's
    packages are in. A root that names nothing is an error: a renamed function must not leave a
    hash that no edit changes."""
    reached: set[str] = set()
    for root in roots:
        module, _, name = root.partition(":")
        reached |= _reached(module, name or None, parent)
    digest = hashlib.sha256()
    for name_and_code in sorted(reached):
        digest.update(name_and_code.encode() + b"\0")
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return "src-" + digest.hexdigest()[:12]


@dataclass(frozen=True)
class _Statement:
    """One top-level statement, as the hash reads it."""
    label: str  # the name it defines ("" for none)
    code: str  # without docstrings, comments or layout
    chains: tuple[tuple[str, ...], ...]  # the dotted names it uses


@dataclass
class _Module:
    """One project module, as the hash reads it."""
    definitions: dict[str, list[_Statement]] = field(default_factory=dict)  # top-level name → its statements
    loose: list[_Statement] = field(default_factory=list)  # top-level statements that define no name
    # local name → every (module, attribute) it is imported as, a function's own imports included
    imported: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    starred: list[str] = field(default_factory=list)  # modules imported with *


def _reached(module: str, name: str | None, parent: Path) -> set[str]:
    """``name \0 code`` of every definition reached from ``module`` (all of it) or from its
    definition ``name``, and the loose statements of every module visited and of the packages
    above it (they run on import)."""
    modules: dict[str, _Module | None] = {}

    def load(where: str) -> _Module | None:
        if where not in modules:
            modules[where] = _load(where, parent)
        return modules[where]

    if load(module) is None or (name is not None and name not in load(module).definitions):
        raise ValueError(f"code_version: {module}{':' + name if name else ''} names no project module or "
                         "top-level definition")
    out: set[str] = set()
    seen: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = [(module, name)]
    visited: set[str] = set()  # modules whose loose statements are in
    while todo:
        where, what = todo.pop()
        if (where, what) in seen or load(where) is None:
            continue
        seen.add((where, what))
        parsed = load(where)
        statements = ([s for group in parsed.definitions.values() for s in group] if what is None
                      else parsed.definitions.get(what, []))
        if where not in visited:  # the first visit: its loose statements, and its packages'
            visited.add(where)
            statements = statements + parsed.loose
            packages = where.split(".")
            todo += [(".".join(packages[:n]), "") for n in range(1, len(packages))]
        for statement in statements:
            out.add(f"{statement.label}\0{statement.code}")
            todo += [found for chain in statement.chains for found in _resolve(load, where, chain)]
    return out


def _resolve(load, module: str, chain: tuple[str, ...], depth: int = 0) -> list[tuple[str, str | None]]:
    """Where a dotted name used in ``module`` is defined: (its module, its top-level name), or
    (a module, None) when the name is a whole module; one entry per import of that name, none
    outside the project."""
    parsed = load(module)
    if parsed is None or depth > 50:
        return []
    head, rest = chain[0], chain[1:]
    # a name can be defined here and imported too (`try: from x import f` / `except: f = None`)
    targets: list[tuple[str, str | None]] = [(module, head)] if head in parsed.definitions else []
    for source, attribute in parsed.imported.get(head, []):
        if attribute is None:
            targets += [(source, None)] if load(source) else []
        elif load(f"{source}.{attribute}") is not None:
            targets.append((f"{source}.{attribute}", None))
        else:
            targets += _resolve(load, source, (attribute,), depth + 1)
    if not targets:
        for starred in parsed.starred:
            targets = _resolve(load, starred, (head,), depth + 1)
            if targets:
                break
        if not targets and load(f"{module}.{head}") is not None:  # a submodule
            targets = [(f"{module}.{head}", None)]
    found = []
    for target in targets:  # an attribute of a module: what it names there, or the whole module
        found += (rest and target[1] is None and _resolve(load, target[0], rest, depth + 1)) or [target]
    return found


def _load(module: str, parent: Path) -> _Module | None:
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    stem = parent / module.replace(".", "/")
    init = stem / "__init__.py"  # a folder without one (a leftover __pycache__) is no package
    path = init if init.is_file() else stem.with_suffix(".py")
    if not path.is_file():
        return None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _parse(path.read_text(encoding="utf-8"), package)


@functools.lru_cache(maxsize=256)
def _parse(source: str, package: str) -> _Module:
    found = _Module()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):  # imports anywhere, a function's own included
            for alias in node.names:
                if alias.asname:
                    found.imported.setdefault(alias.asname, []).append((alias.name, None))
                else:  # `import a.b` binds `a`
                    top = alias.name.split(".")[0]
                    found.imported.setdefault(top, []).append((top, None))
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([source] if source else []))
            for alias in node.names:
                if alias.name == "*":
                    found.starred.append(source)
                else:
                    found.imported.setdefault(alias.asname or alias.name, []).append((source, alias.name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or _is_docstring(statement):
            continue
        names = _defined_names(statement)
        read = _Statement(names[0] if names else "", ast.unparse(statement), _chains(statement))
        for name in names:
            found.definitions.setdefault(name, []).append(read)
        if not names or isinstance(statement, _COMPOUND):  # runs on import, whatever it defines
            found.loose.append(read)
    return found


_COMPOUND = (ast.If, ast.Try, ast.With, ast.For, ast.While)


def _defined_names(statement: ast.stmt) -> list[str]:
    """The module-level names a top-level statement binds; a compound one (``if``, ``try``,
    ``with``, ``for``) binds what its body defines."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    if isinstance(statement, ast.Assign):
        return [name for target in statement.targets for name in _bound(target)]
    if isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        return _bound(statement.target)
    if isinstance(statement, _COMPOUND):
        bodies = [statement.body, getattr(statement, "orelse", []), getattr(statement, "finalbody", []),
                  *[handler.body for handler in getattr(statement, "handlers", [])]]
        names = [name for body in bodies for inner in body for name in _defined_names(inner)]
        if isinstance(statement, ast.For):
            names += _bound(statement.target)
        return list(dict.fromkeys(names))
    return []


def _bound(target: ast.expr) -> list[str]:
    """The names an assignment target binds: ``a``, ``a, b``, ``*a``; ``t[k] = …`` and ``t.x = …``
    change ``t``."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _bound(element)]
    if isinstance(target, ast.Starred):
        return _bound(target.value)
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        target = target.value
    return [target.id] if isinstance(target, ast.Name) else []


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _chains(statement: ast.stmt) -> tuple[tuple[str, ...], ...]:
    """Every dotted name the statement uses (``a``, ``a.b.c``), longest only."""
    inner = {id(node.value) for node in ast.walk(statement) if isinstance(node, ast.Attribute)}
    chains = set()
    for node in ast.walk(statement):
        if id(node) in inner or not isinstance(node, (ast.Name, ast.Attribute)):
            continue
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            chains.add((node.id, *reversed(parts)))
    return tuple(sorted(chains))


def git_commit() -> str:
    """The checkout's commit, recorded for provenance ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_PARENT,
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def file_checksum(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def run_attrs(settings: dict, version: str, started: str, seconds: float, **extra) -> dict:
    """The attributes every computed group carries."""
    return {"settings": settings_json(settings), "code_version": version,
            "libraries": json.dumps(library_versions(), sort_keys=True),
            "git_commit": git_commit(), "started": started, "seconds": round(seconds, 3), **extra}
