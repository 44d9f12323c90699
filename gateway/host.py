"""`GatewayHost`: the small interface a running gateway offers its plug-ins.

Plug-ins (format adapters, the cloud-sync path, edge inference, and the ones to come) are
installed by `gateway.app.create_gateway`, the one composition root. Each receives a
`GatewayHost`, never the concrete `gateway.app.Gateway`, so imports point one way (the app
imports the plug-ins; a plug-in imports only this module and its own), and a plug-in cannot
reach past the seam. A plug-in gives the host data and functions (adapters, callbacks, tasks,
health parts, lifetimes); the host calls them. Plug-ins meet each other only through the host:
edge inference hands its events to ``emit_event``, and whoever registered ``on_event`` (local
actions) receives them.

Registration (`add_*`, `on_*`) happens before `start`; the database and MQTT calls
(`run_db`, `store`, `publish`) work while the gateway runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Connection

    from gateway.config import GatewayConfig
    from gateway.ingest import AudioIn, ReadingsIn, TopicAdapter
    from gateway.records import EdgeEvent, Reading

T = TypeVar("T")

ReadingsCallback = Callable[["Sequence[Reading]"], Awaitable[None]]
AudioCallback = Callable[["AudioIn"], Awaitable[None]]
EventCallback = Callable[["EdgeEvent"], None]
"""Called on the event loop with each inference event; it must not block or await (it queues
what takes time), since it runs inside the inference results' hand-off."""
TaskFactory = Callable[[], Coroutine[Any, Any, None]]
ForgottenCallback = Callable[[str, str], None]
HealthFn = Callable[[], dict[str, Any]]
Lifetime = Callable[[], AsyncIterator[None]]
"""An async generator function: code before its ``yield`` runs at start (after the writer is
up, before MQTT connects), code after it at shutdown (before the writer stops), in reverse
order of registration, like aiohttp's ``cleanup_ctx``."""


class GatewayHost(Protocol):
    """What a plug-in may use of the gateway; see the module docstring."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def registry(self) -> CollectorRegistry:
        """The gateway's own Prometheus registry, served on ``/metrics``."""
        ...

    @property
    def status_topic(self) -> str:
        """The retained availability topic of the gateway (``online``/``offline``)."""
        ...

    def add_adapter(self, adapter: TopicAdapter) -> None:
        """Subscribe to ``adapter.filters`` and decode those topics with it (before start)."""
        ...

    def on_readings(self, callback: ReadingsCallback) -> None:
        """``await callback(readings)`` with the readings each commit newly stored."""
        ...

    def on_audio(self, callback: AudioCallback) -> None:
        """``await callback(frame)`` with every valid audio frame after its device's commit."""
        ...

    def on_event(self, callback: EventCallback) -> None:
        """``callback(event)`` with every inference event (`EventCallback`)."""
        ...

    def emit_event(self, event: EdgeEvent) -> None:
        """Hand `event` to every ``on_event`` callback (event loop; never blocks). A callback
        that raises is logged and counted; the others still get the event."""
        ...

    def on_device_forgotten(self, callback: ForgottenCallback) -> None:
        """``callback(home, device)`` on the event loop for each device the gateway's device
        table forgets (idle for ``devices.idle_s``; `gateway.device_table`)."""
        ...

    def via_adapter(self, home: str, device: str) -> bool:
        """True when the device's messages come through an ecosystem adapter (so its
        ecosystem may announce it to Home Assistant itself)."""
        ...

    def add_task(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` for the gateway's lifetime; restarted with backoff if it raises."""
        ...

    def add_health(self, name: str, fn: HealthFn) -> None:
        """Show ``fn()`` under `name` in ``/healthz`` (informational: the ``status`` comes
        from the gateway's own checks, `gateway.health`)."""
        ...

    def add_lifetime(self, lifetime: Lifetime) -> None:
        """Set-up before the tasks start and teardown at shutdown; see `Lifetime`."""
        ...

    async def run_db(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in the writer thread in its own transaction."""
        ...

    async def store(self, item: ReadingsIn) -> None:
        """Store readings through the writer's batch path (callbacks and ``last_seen`` hold
        as for readings from MQTT); returns once they are committed."""
        ...

    async def mqtt_ready(self) -> None:
        """Return once the gateway's MQTT session exists: from then on `publish` queues
        messages (sent once connected) instead of dropping them."""
        ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1 on the gateway's own MQTT session (its one identity); False when
        the outgoing queue is full (the message is dropped and counted)."""
        ...
