"""What every computed group records about how it was made: its settings, the hash of the code
that computes it (so unchanged work is skipped and changed code recomputes), the commit, when and
how long.

The code hash follows names, not files. From its root (a runner module, or one function) it
reaches every top-level definition of the project that the reached code names, through imports
and re-exports, and hashes each by its name and its code (``ast.unparse``, docstrings dropped),
never by the module it sits in. So moving a function to another module, splitting a module, or
editing a docstring, a comment or the layout of a line recomputes nothing; changing the code of
a reached definition recomputes every group it reaches; a definition nothing reaches (another
method, the report, the figures) never counts. Top-level statements that define no name (an
``if`` at import time) count whenever their module is reached."""
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


def code_version(root: str, *, parent: Path = PACKAGE_PARENT) -> str:
    """Hash of the code that computes a group, from ``root``: a module (``"steerlab.cli.caa"``: all
    its top-level code) or one definition in it (``"steerlab.measure.scales:residual_norm"``).
    ``parent`` is the folder the project's packages are in."""
    module, _, name = root.partition(":")
    definitions = _reached(module, name or None, parent)
    digest = hashlib.sha256()
    for name_and_code in sorted(definitions):
        digest.update(name_and_code.encode() + b"\0")
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
    imported: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local name → (module, attribute)
    starred: list[str] = field(default_factory=list)  # modules imported with *


def _reached(module: str, name: str | None, parent: Path) -> set[str]:
    """``name \0 code`` of every definition and loose statement reached from ``module`` (all of
    it) or from its definition ``name``."""
    modules: dict[str, _Module | None] = {}

    def load(where: str) -> _Module | None:
        if where not in modules:
            modules[where] = _load(where, parent)
        return modules[where]

    out: set[str] = set()
    seen: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = [(module, name)]
    while todo:
        where, what = todo.pop()
        if what is not None:  # a name used in `where`: find the module that defines it
            found = _resolve(load, where, (what,))
            if found is None:
                continue
            where, what = found
        if (where, what) in seen:
            continue
        seen.add((where, what))
        parsed = load(where)
        statements = parsed.loose + ([s for group in parsed.definitions.values() for s in group]
                                     if what is None else parsed.definitions[what])
        for statement in statements:
            out.add(f"{statement.label}\0{statement.code}")
            todo += [found for chain in statement.chains if (found := _resolve(load, where, chain)) is not None]
    return out


def _resolve(load, module: str, chain: tuple[str, ...], depth: int = 0) -> tuple[str, str | None] | None:
    """Where a dotted name used in ``module`` is defined: (its module, its top-level name), or
    (a module, None) when the name is a whole module; None outside the project."""
    parsed = load(module)
    if parsed is None or depth > 50:
        return None
    head, rest = chain[0], chain[1:]
    if head in parsed.definitions:
        return module, head
    target = None
    if head in parsed.imported:
        source, attribute = parsed.imported[head]
        if attribute is None:
            target = (source, None) if load(source) else None
        elif load(f"{source}.{attribute}") is not None:
            target = (f"{source}.{attribute}", None)
        else:
            target = _resolve(load, source, (attribute,), depth + 1)
    else:
        for starred in parsed.starred:
            target = _resolve(load, starred, (head,), depth + 1)
            if target is not None:
                break
        if target is None and load(f"{module}.{head}") is not None:  # a submodule
            target = (f"{module}.{head}", None)
    if target is None or target[1] is not None or not rest:
        return target
    return _resolve(load, target[0], rest, depth + 1) or target  # an attribute of a module


def _load(module: str, parent: Path) -> _Module | None:
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    stem = parent / module.replace(".", "/")
    path = stem / "__init__.py" if stem.is_dir() else stem.with_suffix(".py")
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
                    found.imported[alias.asname] = (alias.name, None)
                else:  # `import a.b` binds `a`
                    top = alias.name.split(".")[0]
                    found.imported.setdefault(top, (top, None))
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([source] if source else []))
            for alias in node.names:
                if alias.name == "*":
                    found.starred.append(source)
                else:
                    found.imported[alias.asname or alias.name] = (source, alias.name)
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
        if not names:
            found.loose.append(read)
    return found


def _defined_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [statement.name]
    targets = (statement.targets if isinstance(statement, ast.Assign)
               else [statement.target] if isinstance(statement, (ast.AnnAssign, ast.AugAssign)) else [])
    return [node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name)]


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
            "git_commit": git_commit(), "started": started, "seconds": round(seconds, 3), **extra}
