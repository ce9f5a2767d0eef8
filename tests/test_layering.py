"""The import rules of DESIGN.md, held by walking every module's imports (``ast``).

* ``flows → models → pipeline`` and ``flows → pipeline``; nothing outside ``flows`` imports
  ``flows``.
* ``pipeline`` never imports torch, prefect, distributed or the CLI libraries.
* Inside ``pipeline``, stage packages follow the data flow::

      demo  →  acquire, rain  →  plan, factors, predict, store, products  →  core

  ``core`` (the foundation) imports nothing else of ours; the middle row (pure planning,
  pure compute, the store and the products) imports only ``core``; ``acquire`` also uses
  ``plan`` and the pure kernels of ``factors``; ``rain`` also uses ``plan``. So I/O uses
  pure code and never the reverse.
* Inside ``flows``, modules share only the stage functions (``flows.stages``), the Dask
  context (``flows.dask_context``), the Prefect flows (``flows.prefect_flows``, for the
  watch commands) and how the CLI shows errors (``flows.console``): no constants or
  helpers from one another.

Function-level imports count as much as module-level ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows", "models")

#: Stage packages of ``pipeline`` and the ones each may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "plan": {"core"},
    "factors": {"core"},
    "predict": {"core"},
    "store": {"core"},
    "products": {"core"},
    "acquire": {"core", "plan", "factors"},
    "rain": {"core", "plan"},
    "demo": {"core", "plan", "factors", "predict", "store", "products", "acquire", "rain"},
}
#: Third-party packages ``pipeline`` must never import.
FORBIDDEN_IN_PIPELINE = {"torch", "prefect", "distributed", "typer", "rich", "flows", "models"}
#: What a ``flows`` module may import from the rest of ``flows``.
FLOWS_SHARED = {"flows.stages", "flows.dask_context", "flows.prefect_flows", "flows.prefect_server", "flows.console"}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod
            for alias in node.names:  # ``from pipeline import core`` names a package too
                yield node.lineno, f"{mod}.{alias.name}"


def modules(root: Path = REPO) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def stage_of(module: str) -> str | None:
    """``acquire`` for ``pipeline.acquire.cube``; None for ``pipeline`` itself and non-library names."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in ALLOWED else None


def broken_rules(me: str, target: str) -> list[str]:
    """The rules that importing ``target`` from module ``me`` breaks."""
    top, head = me.split(".")[0], target.split(".")[0]
    rules = []
    if top != "flows" and head == "flows":
        rules.append("nothing outside flows imports flows")
    if top == "pipeline" and head in FORBIDDEN_IN_PIPELINE:
        rules.append(f"pipeline never imports {head}")
    if top == "models" and head in {"prefect", "distributed"}:
        rules.append(f"models never imports {head}")
    if top == "pipeline":
        mine, theirs = stage_of(me), stage_of(target)
        if mine and theirs and theirs != mine and theirs not in ALLOWED[mine]:
            rules.append(f"pipeline.{mine} may import only {sorted(ALLOWED[mine]) or 'nothing else of ours'}")
    if top == "flows" and head == "flows":
        mine_pkg = ".".join(me.split(".")[:2])
        shared = any(target == s or target.startswith(s + ".") for s in FLOWS_SHARED)
        if not shared and not target.startswith(mine_pkg + ".") and target not in (mine_pkg, "flows"):
            rules.append(f"flows modules share only {sorted(FLOWS_SHARED)}")
    return rules


def violations(root: Path = REPO) -> list[str]:
    """Every import that breaks a rule, as ``file:line: importer -> imported (rule)``, once per
    statement and rule (``from a import b, c`` names a, a.b and a.c)."""
    out: dict[tuple[str, int, str], str] = {}
    for path in modules(root):
        me = module_name(path, root)
        for line, target in imports(path, root):
            for rule in broken_rules(me, target):
                key = (path.relative_to(root).as_posix(), line, rule)
                out.setdefault(key, f"{key[0]}:{line}: {me} -> {target} ({rule})")
    return list(out.values())


def test_every_module_follows_the_import_rules() -> None:
    assert violations() == []


def test_every_library_module_is_in_a_stage_package() -> None:
    loose = [p.name for p in (REPO / "pipeline").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside a stage package: {loose}"
    stages = {p.name for p in (REPO / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == set(ALLOWED)


@pytest.mark.parametrize(
    ("where", "line", "rule"),
    [
        ("pipeline/factors/lsi.py", "from pipeline.acquire.catalog import RunInputs", "pipeline.factors may import only"),
        ("pipeline/core/config.py", "from pipeline.plan import grid", "pipeline.core may import only"),
        ("pipeline/predict/inference.py", "import torch", "pipeline never imports torch"),
        ("pipeline/store/tiles.py", "    from distributed import get_client", "pipeline never imports distributed"),
        ("models/networks.py", "from flows.stages import cube_stage", "nothing outside flows imports flows"),
        ("flows/stages/lsi.py", "from flows.cli import console", "flows modules share only"),
        ("pipeline/products/cog.py", "from ..rain import events", "pipeline.products may import only"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path: Path, where: str, line: str, rule: str) -> None:
    """The check itself: a copy of the tree with one bad import added fails it."""
    for path in modules():
        dest = tmp_path / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text()
        if path.relative_to(REPO).as_posix() == where:
            text += f"\n\ndef _added():\n    {line.strip()}\n"
        dest.write_text(text)
    found = violations(tmp_path)
    assert len(found) == 1 and rule in found[0] and where in found[0], found
