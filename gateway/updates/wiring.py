"""Bundles from the cloud inside a running gateway: `install_updates(host, ...)`.

- task ``updates`` (`gateway.updates.manager.UpdateManager`): polls, applies, soaks, reports,
  reverts; present when ``[updates]`` is enabled (by default: ``root_file`` and
  ``uplink.url`` both set);
- ``/healthz`` gets an ``updates`` object: running, staged and previous versions, the version
  on trial, versions that failed here, reverts;
- gauges ``homeedge_gateway_updates_running_version`` and
  ``homeedge_gateway_updates_staged_version`` (0: the built-in models / nothing staged),
  ``homeedge_gateway_updates_on_trial`` (1 while a bundle soaks) and
  ``homeedge_gateway_updates_reverts`` (since start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.host import GatewayHost

if TYPE_CHECKING:
    from gateway.updates.manager import InferenceControl, UpdateManager


def install_updates(
    host: GatewayHost,
    *,
    local: GatewayConfig,
    inference: InferenceControl | None,
    gateway_health: Callable[[], dict[str, Any]],
    restart: Callable[[], None],
) -> UpdateManager | None:
    """Wire the update manager in (before start); None when updates are off. `local`: the
    configuration without the active bundle's overlay (`gateway.updates.boot`)."""
    if not local.updates_on:
        return None
    # Imported here: the manager pulls in aiohttp and python-tuf, which a gateway without
    # updates (no cloud) does not load.
    from prometheus_client import Gauge

    from gateway.updates.manager import UpdateManager

    manager = UpdateManager(
        local=local,
        running=host.config,
        inference=inference,
        gateway_health=gateway_health,
        restart=restart,
    )

    def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=host.registry).set_function(fn)

    gauge(
        "homeedge_gateway_updates_running_version",
        "bundle version the gateway runs (0: its built-in models and local config)",
        lambda: float(manager.state.version or 0),
    )
    gauge(
        "homeedge_gateway_updates_staged_version",
        "bundle version unpacked in the inactive slot, waiting to be applied (0: none)",
        lambda: float(manager.state.staged_version or 0),
    )
    gauge(
        "homeedge_gateway_updates_on_trial",
        "1 while an applied bundle soaks (not yet confirmed healthy)",
        lambda: float(manager.state.trial is not None),
    )
    gauge(
        "homeedge_gateway_updates_reverts",
        "reverts to the previous slot since start",
        lambda: float(manager.reverts),
    )
    host.add_task("updates", manager.run)
    host.add_health("updates", manager.status)
    return manager
