"""The gateway's import boundary: nothing under gateway/ imports the device simulators
(``devices``) or the offline training code (``training``), not even inside a function.

Parsed, not imported: a lazy import in a rarely run function breaks the boundary as much as a
module-level one, and only the syntax tree sees both."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("devices", "training")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` (under `root`) imports anywhere in it, relative imports made absolute."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
    return out


def test_no_gateway_module_imports_devices_or_training() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    probe = tmp_path / "gateway" / "inference" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import gateway.db\n"
        "def f():\n"
        "    from devices.world import World\n"
        "    import training.export\n"
        "    from ..records import Reading\n"
        "    from . import audio\n",
        encoding="utf-8",
    )
    assert imported_modules(probe, tmp_path) == {
        "gateway.db",
        "devices.world",
        "training.export",
        "gateway.records",
        "gateway.inference",
    }
