"""Local actions inside a running gateway: `install_actions(host, settings)`.

- ``host.on_event``: every inference event goes through `LocalActions.on_event` (event loop,
  no I/O, never waits);
- MQTT commands and notify-topic messages go out on the gateway's own MQTT session
  (``host.publish``, QoS 1), on ``<root>/<gateway_id>/gateway/notify``
  (`schemas.topics.gateway_notify_topic`);
- one task ``actions-webhook-<n>`` per rule with a webhook (`WebhookSender.run`);
- counters ``homeedge_gateway_actions_total{rule,action,outcome}``,
  ``homeedge_gateway_actions_webhook_retries_total{rule}`` and the gauge
  ``homeedge_gateway_actions_webhook_queue{rule}`` on ``/metrics``; ``/healthz`` gets an
  ``actions`` object (rules, notify topic, webhook queue depths).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from gateway.actions.metrics import ActionMetrics
from gateway.actions.runner import LocalActions
from gateway.actions.settings import ActionsSettings
from gateway.actions.webhook import WebhookSender
from gateway.host import GatewayHost
from schemas.topics import gateway_notify_topic


def _depth_of(sender: WebhookSender) -> Callable[[], float]:
    return lambda: float(sender.depth)


def install_actions(host: GatewayHost, settings: ActionsSettings) -> LocalActions | None:
    """Wire the rules into the gateway (before it starts); see the module docstring."""
    if not settings.enabled:
        return None
    metrics = ActionMetrics(host.registry)
    senders: dict[str, WebhookSender] = {}
    depth = Gauge(
        "homeedge_gateway_actions_webhook_queue",
        "notifications waiting for a rule's webhook (bounded by its queue_size)",
        ["rule"],
        registry=host.registry,
    )
    for n, rule in enumerate(settings.all_rules()):
        if rule.webhook is None:
            continue
        sender = senders[rule.name] = WebhookSender(rule.name, rule.webhook, metrics)
        depth.labels(rule.name).set_function(_depth_of(sender))
        host.add_task(f"actions-webhook-{n}", sender.run)
    topic = gateway_notify_topic(host.config.gateway_id, root=host.config.mqtt.topic_root)
    actions = LocalActions(
        settings, publish=host.publish, notify_topic=topic, metrics=metrics, senders=senders
    )
    host.on_event(actions.on_event)

    def health() -> dict[str, Any]:
        return {
            "rules": [r.name for r in actions.rules],
            "notify_topic": topic,
            "webhook_queue": {name: s.depth for name, s in senders.items()},
        }

    host.add_health("actions", health)
    return actions
