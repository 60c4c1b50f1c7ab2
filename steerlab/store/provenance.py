"""What every computed group records about how it was made: its settings, the hash of the code
that computes it (so unchanged work is skipped and changed code recomputes), the commit, when and
how long."""
from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


PROJECT_PACKAGES = ("steerlab",)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version(module: str) -> str:
    """Hash of the sources that compute a group: ``module`` (e.g. ``"steerlab.cli.caa"``) and every
    project module it imports, transitively, found by reading import statements. A change to the
    report or the plots leaves stored vectors current; a change to anything they are computed by
    does not."""
    digest = hashlib.sha256()
    for path in sorted(_project_sources(module)):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return "src-" + digest.hexdigest()[:12]


def _project_sources(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        stem = REPO_ROOT / todo.pop().replace(".", "/")
        path = stem / "__init__.py" if stem.is_dir() else stem.with_suffix(".py")
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return {path for path in seen if path.relative_to(REPO_ROOT).parts[0] in PROJECT_PACKAGES}


def git_commit() -> str:
    """The checkout's commit, recorded for provenance ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
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
