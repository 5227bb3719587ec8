"""The layout's rule, read from the code's imports: the worker and the core it shares with the API
never import the HTTP edge or the `make run` tooling, and the service never imports the worker."""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.processes import PROJECT_DIR

# Each folder, and the modules its files may not import (a prefix stands for the modules under it).
RULES = {
    "jobs": ("service.api", "service.dev", "service.app", "service.__main__"),
    "service/core": ("service.api", "service.dev", "service.app", "service.__main__", "jobs", "starlette"),
    "service": ("jobs",),
}


def imported_modules(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each import in a file under root; `from package import name` also yields
    package.name, and relative imports are made absolute."""
    package = ".".join(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *filter(None, [node.module])])
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def crossings(root: Path = PROJECT_DIR) -> list[str]:
    """Every import that breaks a rule, as "file:line imports module"."""
    found = []
    for folder, forbidden in RULES.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, module in imported_modules(path, root):
                if any(_within(module, prefix) for prefix in forbidden):
                    found.append(f"{path.relative_to(root).as_posix()}:{line} imports {module}")
    return sorted(set(found))


def test_the_worker_and_the_core_import_neither_the_edge_nor_the_dev_tooling() -> None:
    assert crossings() == []


def test_the_rule_sees_a_crossing_import(tmp_path: Path) -> None:
    # Both spellings a newcomer might write, in a copy of the tree: the test above would fail on them.
    for folder in ("jobs", "service"):
        target = tmp_path / folder
        target.mkdir()
        for path in (PROJECT_DIR / folder).rglob("*.py"):
            copy = target / path.relative_to(PROJECT_DIR / folder)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    (tmp_path / "jobs/tasks.py").write_text("from service.api.errors import NotFound\n", encoding="utf-8")
    (tmp_path / "service/core/events.py").write_text("from ..api import responses\nimport jobs.worker\n")
    found = crossings(tmp_path)
    assert "jobs/tasks.py:1 imports service.api.errors" in found
    assert "service/core/events.py:1 imports service.api" in found
    assert "service/core/events.py:2 imports jobs.worker" in found


def test_a_worker_process_loads_no_web_framework() -> None:
    """What `python -m jobs` and `arq jobs.worker.WorkerSettings` import, in a fresh interpreter."""
    probe = (
        "import sys, jobs.worker, jobs.fastworker\n"
        "print('\\n'.join(m for m in sys.modules if m.partition('.')[0] in ('starlette', 'jinja2', 'uvicorn')"
        " or m.startswith(('service.api', 'service.dev', 'service.app'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    assert result.stdout.split() == []
