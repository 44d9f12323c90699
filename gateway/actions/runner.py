"""`LocalActions`: every inference event through the ``[actions]`` rules, on the event loop.

`on_event` is the host's event callback: it runs inside the inference results' hand-off, so
it does no I/O of its own and never waits. Per matching rule, in this order:

1. quiet hours (`gateway.actions.rules.quiet`): in them a rule's notifications (notify topic,
   webhook) are counted ``quiet`` and skipped; its MQTT command still runs. A rule left with
   nothing to do stops here, so quiet hours do not use up its rate limit;
2. the rate limit (`gateway.actions.rules.RateLimiter`, monotonic clock): over it, every
   remaining action is counted ``rate_limited``;
3. the MQTT command and the notify-topic message are queued on the gateway's one MQTT session
   (``publish``: QoS 1, bounded by ``mqtt.publish_queue``; ``sent`` when queued, ``dropped``
   when it was full); the webhook's notification goes to its `WebhookSender`'s bounded queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping

from gateway.actions import rules
from gateway.actions.metrics import ActionMetrics
from gateway.actions.settings import ActionsSettings, Rule
from gateway.actions.webhook import WebhookSender
from gateway.records import EdgeEvent, EventKind
from schemas.notify import encode_notification

log = logging.getLogger(__name__)

PublishFn = Callable[..., bool]
"""``publish(topic, payload, retain=False) -> bool``: `gateway.host.GatewayHost.publish`."""


class LocalActions:
    """See the module docstring."""

    def __init__(
        self,
        settings: ActionsSettings,
        *,
        publish: PublishFn,
        notify_topic: str,
        metrics: ActionMetrics,
        senders: Mapping[str, WebhookSender],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.rules = settings.all_rules()
        self._publish = publish
        self.notify_topic = notify_topic
        self._metrics = metrics
        self._senders = senders
        self._clock = clock
        # Rules by the event kinds they can match: an anomaly window does not walk the keyword
        # rules. A rule without kinds is in every list; each list keeps the configured order.
        self._by_kind = {
            kind: [r for r in self.rules if r.kinds is None or kind in r.kinds]
            for kind in EventKind
        }
        self._limiter = rules.RateLimiter()
        self._tz = settings.tz()
        self._notify_fields = tuple(settings.notify_fields)
        for rule in self.rules:  # every series exists from the start (rate() needs a zero)
            for action in _actions(rule):
                for outcome in _OUTCOMES[action]:
                    metrics.series(rule.name, action, outcome)

    def on_event(self, event: EdgeEvent) -> None:
        self._metrics.events.inc()
        for rule in self._by_kind[event.kind]:
            if rules.matches(rule, event):
                self._fire(rule, event)

    def _fire(self, rule: Rule, event: EdgeEvent) -> None:
        actions = _actions(rule)
        if (rule.notify or rule.webhook) and rules.quiet(
            rule, event, self.settings.quiet_hours, self._tz
        ):
            for action in ("notify", "webhook"):
                if action in actions:
                    self._metrics.count(rule.name, action, "quiet")
                    actions.remove(action)
            if not actions:
                return
        if not self._limiter.allow(rule, event, self._clock()):
            for action in actions:
                self._metrics.count(rule.name, action, "rate_limited")
            return
        if "mqtt" in actions:
            assert rule.mqtt is not None
            self._count_publish(
                rule,
                "mqtt",
                self._publish(rule.mqtt.topic, rule.mqtt.encoded(), retain=rule.mqtt.retain),
            )
        if "notify" not in actions and "webhook" not in actions:
            return
        # One id for both, so a receiver of both can tell they are the same notification.
        nid = uuid.uuid4().hex
        if "notify" in actions:
            note = rules.notification(
                rule, event, self._notify_fields, self._tz, notification_id=nid
            )
            payload = encode_notification(note)
            self._count_publish(rule, "notify", self._publish(self.notify_topic, payload))
        if "webhook" in actions:
            assert rule.webhook is not None
            note = rules.notification(
                rule, event, rule.webhook.fields, self._tz, notification_id=nid
            )
            self._senders[rule.name].submit(note)

    def _count_publish(self, rule: Rule, action: str, queued: bool) -> None:
        self._metrics.count(rule.name, action, "sent" if queued else "dropped")
        if not queued:
            log.debug("rule %r: the MQTT queue was full, %s dropped", rule.name, action)


_OUTCOMES = {
    "mqtt": ("sent", "dropped", "rate_limited"),
    "notify": ("sent", "dropped", "rate_limited", "quiet"),
    "webhook": ("sent", "failed", "dropped", "rate_limited", "quiet"),
}


def _actions(rule: Rule) -> list[str]:
    out = []
    if rule.mqtt is not None:
        out.append("mqtt")
    if rule.notify:
        out.append("notify")
    if rule.webhook is not None:
        out.append("webhook")
    return out
