"""The gateway's import graph: no cycles, and plug-ins never import the app they plug into.

`gateway.app` is the composition root: it imports the plug-ins (adapters, sync, inference)
and hands them a `gateway.host.GatewayHost`. A plug-in importing the app back, even only for
type checking, is the seam this test keeps closed."""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import find_cycles
from tests.test_gateway_imports import imported_modules

ROOT = Path(__file__).resolve().parents[1]
# Modules allowed to import gateway.app: the process entry point only.
APP_USERS = {"gateway/__main__.py", "gateway/app.py"}


def test_the_gateway_package_has_no_import_cycles() -> None:
    assert find_cycles(ROOT / "gateway", "gateway") == []


def test_no_gateway_module_but_the_entry_point_imports_the_app() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in APP_USERS
        # Every import, TYPE_CHECKING blocks included: the Protocol replaces them.
        and any(name == "gateway.app" for name in imported_modules(path))
    ]
    assert offenders == []
