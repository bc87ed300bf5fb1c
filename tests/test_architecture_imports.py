"""The layering of the package: the engine is at the bottom and imports nothing above it.

Read from the source with ``ast`` (not by importing), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import linearlens

PACKAGE = Path(linearlens.__file__).parent

# package -> packages it may import from (besides itself)
ALLOWED = {
    "engine": set(),
    "layers": {"engine"},
}


def _imports(source: str, parts: tuple[str, ...]) -> set[str]:
    """Top-level linearlens sub-packages imported by the module at ``linearlens/<parts>`` with text ``source``."""
    tree = ast.parse(source)
    depth = len(parts) - 1  # folders below linearlens/
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > depth:  # climbs to linearlens/ itself: the first component names the package
                    target = (node.module or "").split(".")[0]
                else:
                    target = parts[0]
                found.add(target)
            elif node.module and node.module.startswith("linearlens."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("linearlens."):
                    found.add(alias.name.split(".")[1])
    return found


def test_lower_layers_import_nothing_above_them():
    offenders = []
    for package, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            rel = path.relative_to(PACKAGE).parts
            bad = _imports(path.read_text(encoding="utf-8"), rel) - allowed - {package, ""}
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def test_the_checker_sees_upward_imports():
    """The rule itself can fail: relative, absolute and nested upward imports are all reported."""
    parts = ("engine", "x.py")
    assert _imports("from ..explain import explain\n", parts) == {"explain"}
    assert _imports("import linearlens.models.registry\n", parts) == {"models"}
    assert _imports("def f():\n    from ...interpret import LinearScope\n", ("engine", "sub", "x.py")) == {"interpret"}
    assert _imports("from .state import decide\n", parts) == {"engine"}
