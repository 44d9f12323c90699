"""Edge inference inside a running gateway: `install_inference(gateway, config, settings)`.

- callbacks: committed readings -> `InferenceEngine.on_readings`; audio frames ->
  `InferenceEngine.on_audio` (the frame is handed over and not kept);
- results are written by the gateway's writer thread: ``inferences`` rows as a job
  (``gateway.writer.run``), ``inference_*`` readings through its batch commit
  (``gateway.writer.store``, so the committed-readings callbacks see them too);
- tasks ``inference`` (the engine) and ``inference-events`` (its own aiomqtt connection for events
  and Home Assistant discovery, same broker, url, credentials and TLS as ``[mqtt]``);
- ``/healthz`` gets an ``inference`` object: models loaded, ``load_errors``, counters.

The models load in a cleanup context at start; a model that fails is named in the log and in
``/healthz`` while the others serve.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from gateway.config import GatewayConfig
from gateway.inference.publisher import EventPublisher
from gateway.inference.settings import InferenceSettings
from gateway.mqtt import build_tls_context
from gateway.records import Reading

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.inference.engine import InferenceEngine
    from gateway.ingest import AudioIn, ReadingsIn

# `create_gateway` installs inference; a second call on the same gateway (older call sites, tests
# that wire by hand) must not start a second engine and a second events client with the same id.
_INSTALLED: weakref.WeakSet[Gateway] = weakref.WeakSet()


def install_inference(
    gateway: Gateway, config: GatewayConfig, settings: InferenceSettings | None = None
) -> None:
    """Wire the engine into `gateway` (before it starts); see the module docstring.

    Idempotent: a gateway that already has inference installed is left as it is."""
    settings = settings or getattr(config, "inference", None) or InferenceSettings()
    if not settings.enabled or gateway in _INSTALLED:
        return
    _INSTALLED.add(gateway)
    # Imported here, not at module level: the engine pulls in onnxruntime (~30 MB resident),
    # which an ingest-only gateway ([inference] enabled = false) must not pay for.
    from gateway.inference.engine import InferenceEngine

    mqtt = config.mqtt
    publisher = EventPublisher(
        mqtt.url,
        client_id=f"{config.client_id}-events",
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        tls_context=build_tls_context(mqtt.tls) if mqtt.use_tls else None,
    )
    holder: dict[str, InferenceEngine] = {}

    async def write(fn: Callable[[Connection], None]) -> None:
        await gateway.writer.run(fn)

    async def store(item: ReadingsIn) -> None:
        await gateway.writer.store(item)

    async def lifetime(_gw: Gateway) -> AsyncIterator[None]:
        engine = InferenceEngine.create(
            settings, write=write, store=store, publisher=publisher, root=mqtt.topic_root
        )
        holder["engine"] = engine
        yield
        engine.close()

    async def on_readings(readings: Sequence[Reading]) -> None:
        if "engine" in holder:
            holder["engine"].on_readings(readings)

    async def on_audio(item: AudioIn) -> None:
        if "engine" in holder:
            holder["engine"].on_audio(item.home, item.room, item.device, item.frame)

    async def run_engine() -> None:
        await holder["engine"].run()

    def health() -> dict[str, Any]:
        engine = holder.get("engine")
        if engine is None:
            return {"state": "not started"}
        return {
            "models": {n: m.manifest.version for n, m in engine.runtime.models.items()},
            "load_errors": [str(e) for e in engine.runtime.errors],
            **asdict(engine.stats),
            "events_published": publisher.published,
            "events_dropped": publisher.dropped,
        }

    gateway.cleanup_ctx.append(lifetime)
    gateway.on_readings(on_readings)
    gateway.on_audio(on_audio)
    gateway.add_task("inference", run_engine)
    gateway.add_task("inference-events", publisher.run)
    gateway.add_health("inference", health)
